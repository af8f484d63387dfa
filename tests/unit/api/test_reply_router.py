"""What an API instance keeps of a job's live text, whose text it takes (the
lease holder the gate named, for its attempt), and what a node taking the job
over mid-stream is told to continue from."""
from api.reply_router import Watch
from bus.replies import Delta, Resume, Started

A, B = "a" * 64, "b" * 64


def delta(offset: int, text: str, attempt: int = 1) -> Delta:
    return Delta(job_id="j", offset=offset, text=text, attempt=attempt)


def leased(watch: Watch, node: str, attempt: int) -> bool:
    return watch.leased(Started(job_id="j", zone="eu", attempt=attempt, node_id=node))


def test_text_grows_by_contiguous_deltas_and_repeats_are_trimmed():
    watch = Watch()
    assert watch.accept(delta(0, "Hello")).text == "Hello"
    assert watch.accept(delta(3, "lo, wor")).text == ", wor"  # overlaps what is here
    assert watch.accept(delta(0, "Hel")) is None
    assert watch.text == "Hello, wor"


def test_only_the_holder_the_gate_named_speaks_for_its_attempt():
    watch = Watch()
    assert not watch.holds(A, 1)  # nobody holds it before the gate says so
    assert leased(watch, A, 1)
    assert watch.holds(A, 1)
    assert not watch.holds(B, 1) and not watch.holds(A, 2) and not watch.holds(None, 1)


def test_a_takeover_silences_the_old_holder_and_resumes_from_the_text_so_far():
    watch = Watch()
    leased(watch, A, 1)
    watch.accept(delta(0, "Once upon"))
    assert leased(watch, B, 2)
    assert not watch.holds(A, 1)  # the paused node woke up: it is no longer heard
    assert watch.resume(Resume(job_id="j", attempt=2)).text == "Once upon"
    fresh = watch.accept(delta(9, " a midnight", attempt=2))
    assert (fresh.offset, fresh.text, watch.text) == (9, " a midnight", "Once upon a midnight")


def test_a_late_lease_notice_of_an_older_attempt_changes_nothing():
    watch = Watch()
    leased(watch, B, 2)
    assert not leased(watch, A, 1)
    assert watch.holds(B, 2)


def test_a_gap_stops_live_text_until_a_takeover_restarts_it_from_what_is_here():
    watch = Watch()
    watch.accept(delta(0, "abc"))
    assert watch.accept(delta(5, "fg")) is None and watch.gapped
    assert watch.accept(delta(3, "de")) is None  # late: the outcome fills it in
    leased(watch, B, 2)
    assert watch.resume(Resume(job_id="j", attempt=2)).text == "abc"
    assert watch.accept(delta(3, "xyz", attempt=2)).text == "xyz"


def completed(node: str, attempt: int, text: str):
    from bus.events import JobCompleted, Usage, output_hash
    return JobCompleted(job_id="j", model="m", node_id=node, operator="op", zone="eu",
                        attempt=attempt, text=text, finish_reason="stop",
                        usage=Usage(prompt_tokens=1, completion_tokens=1), input_hash="i",
                        output_hash=output_hash(text), signature="s")


def test_a_holder_whose_result_does_not_begin_with_what_it_streamed_has_strayed():
    watch = Watch()
    leased(watch, A, 1)
    watch.accept(delta(0, "The answer is 4"))
    assert not watch.strayed(completed(A, 1, "The answer is 4, of course"))
    assert watch.strayed(completed(A, 1, "The answer is 5"))


def test_after_a_takeover_only_a_holder_that_resumed_answers_for_the_whole_text():
    watch = Watch()
    leased(watch, A, 1)
    watch.accept(delta(0, "Once upon"))
    leased(watch, B, 2)
    assert not watch.strayed(completed(B, 2, "A fresh start"))  # B never saw A's text
    watch.resume(Resume(job_id="j", attempt=2))
    watch.accept(delta(9, " a time", attempt=2))
    assert not watch.strayed(completed(B, 2, "Once upon a time."))
    assert watch.strayed(completed(B, 2, "Once upon a midnight"))
    assert not watch.strayed(completed(A, 1, "anything"))  # not the holder: not its text
