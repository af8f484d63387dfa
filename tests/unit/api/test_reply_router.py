"""What an API instance keeps of a job's live text, and what a node taking the
job over mid-stream is told to continue from."""
from api.reply_router import Watch
from bus.replies import Delta, Resume


def delta(offset: int, text: str, attempt: int = 1) -> Delta:
    return Delta(job_id="j", offset=offset, text=text, attempt=attempt)


def test_text_grows_by_contiguous_deltas_and_repeats_are_trimmed():
    watch = Watch()
    assert watch.accept(delta(0, "Hello")).text == "Hello"
    assert watch.accept(delta(3, "lo, wor")).text == ", wor"  # overlaps what is here
    assert watch.accept(delta(0, "Hel")) is None
    assert watch.text == "Hello, wor"


def test_resume_answers_the_text_so_far_and_silences_the_old_attempt():
    watch = Watch()
    watch.accept(delta(0, "Once upon"))
    assert watch.resume(Resume(job_id="j", attempt=2)).text == "Once upon"
    assert watch.accept(delta(9, " a time", attempt=1)) is None  # the paused node woke up
    fresh = watch.accept(delta(9, " a midnight", attempt=2))
    assert (fresh.offset, fresh.text, watch.text) == (9, " a midnight", "Once upon a midnight")


def test_a_gap_stops_live_text_until_a_resume_restarts_it_from_what_is_here():
    watch = Watch()
    watch.accept(delta(0, "abc"))
    assert watch.accept(delta(5, "fg")) is None and watch.gapped
    assert watch.accept(delta(3, "de")) is None  # late: the outcome fills it in
    assert watch.resume(Resume(job_id="j", attempt=2)).text == "abc"
    assert watch.accept(delta(3, "xyz", attempt=2)).text == "xyz"
