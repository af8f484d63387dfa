"""What a spot check costs against the job it checks: the prefill judge
(``verifier.prefill``) on honest and swapped outputs, beside the generation of
those outputs, measured in the same run on the same CPUs.

    .venv/bin/python -m bench.spot_check [--jobs 8] [--tokens 64] [--temperature 0.7]
                                         [--top-p 1.0] [--model DIR] [--gen-dtype bfloat16]

Generates ``--jobs`` chat jobs (``bench.worker``'s topics, one seed each) with
``Engine.generate``, timing each (wall and process CPU time, all threads), then
judges each output as its own job's (honest: all must pass) and as the next
job's (swapped: the output of prompt i claimed for prompt i+1: a fluent answer
of the same model to another question; all fail at temperature 0, only some
above it, where such text is plausible token by token),
timing the CPU milliseconds of each check. ``--gen-dtype`` generates in another
dtype than the judge's (float32 on CPUs): the noise of another GPU. Uses
SmolLM2-135M-Instruct when it is pulled (``inferbus models pull
smollm2-135m-instruct``), else the tiny random model of the tests. Prints a
table and writes bench/results/spot_check.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timedelta, timezone

import torch

from bench.report import save
from bench.worker import TOPICS, find_model
from bus.events import ChatMessage, JobSubmitted, Sampling
from verifier.prefill import PrefillJudge, job_request
from workers.engine import Engine


def a_job(i: int, sampling: Sampling) -> JobSubmitted:
    content = f"Write about {TOPICS[i % len(TOPICS)]}." + " Be vivid." * (i % 3)
    return JobSubmitted(job_id=f"spot-{i}", account="bench", key_id="k", model="bench",
                        kind="chat", messages=(ChatMessage(role="user", content=content),),
                        sampling=sampling.model_copy(update={"seed": i}), zone="eu",
                        route="zone", deadline=datetime.now(timezone.utc) + timedelta(hours=1))


def timed(fn):
    """(result, wall ms, process CPU ms) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def generate(engine: Engine, job: JobSubmitted) -> tuple[str, str, int]:
    steps = list(engine.generate(job_request(job)))
    return "".join(s.text for s in steps), steps[-1].finish_reason, steps[-1].completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--model")
    parser.add_argument("--gen-dtype", choices=["float32", "bfloat16", "float16"],
                        help="generate in this dtype (default: the judge's)")
    args = parser.parse_args()
    path, name = find_model(args.model)
    judge = PrefillJudge.load(path)
    generator = Engine.load(path, dtype=args.gen_dtype) if args.gen_dtype else judge.engine
    sampling = Sampling(max_tokens=args.tokens, temperature=args.temperature, top_p=args.top_p)
    jobs = [a_job(i, sampling) for i in range(args.jobs)]
    warm = generate(generator, jobs[0])  # untimed: first calls allocate and pick kernels
    judge.check(jobs[0], warm[0], warm[1])
    outputs, rows = [], []
    for job in jobs:
        (text, reason, tokens), wall, cpu = timed(lambda: generate(generator, job))
        outputs.append((text, reason))
        rows.append({"job": job.job_id, "tokens": tokens, "finish": reason,
                     "gen_wall_ms": wall, "gen_cpu_ms": cpu})
    for i, (job, row) in enumerate(zip(jobs, rows)):
        verdict, wall, cpu = timed(lambda: judge.check(job, *outputs[i]))
        other = jobs[(i + 1) % len(jobs)]
        swapped, _, swap_cpu = timed(lambda: judge.check(other, *outputs[i]))
        row.update(check_wall_ms=wall, check_cpu_ms=cpu, share=cpu / row["gen_cpu_ms"],
                   honest=verdict.passed, honest_evidence=json.loads(verdict.evidence or "{}"),
                   swapped=swapped.passed, swapped_reason=swapped.reason,
                   swapped_cpu_ms=swap_cpu)
    print(f"model {name}, judge {next(judge.engine.model.parameters()).dtype}, generation "
          f"{next(generator.model.parameters()).dtype}, {torch.get_num_threads()} threads, "
          f"{args.jobs} jobs, max_tokens {args.tokens}, temperature {args.temperature}, "
          f"top_p {args.top_p}")
    print(f"{'job':<8} {'tokens':>6} {'gen wall ms':>11} {'gen CPU ms':>10} "
          f"{'check CPU ms':>12} {'share':>6}  {'honest':<24} swapped (as the next job's)")
    for r in rows:
        ev = r["honest_evidence"]
        honest = f"{'pass' if r['honest'] else 'FAIL'} {ev.get('implausible')}/" \
                 f"{ev.get('tokens')} z={ev.get('z')}"
        print(f"{r['job']:<8} {r['tokens']:>6} {r['gen_wall_ms']:>11.0f} {r['gen_cpu_ms']:>10.0f} "
              f"{r['check_cpu_ms']:>12.0f} {r['share']:>6.1%}  {honest:<24} "
              f"{'PASS' if r['swapped'] else 'fail'}: {r['swapped_reason']}")
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("gen_cpu_ms", "check_cpu_ms", "swapped_cpu_ms", "share")}
    total = sum(r["check_cpu_ms"] for r in rows) / sum(r["gen_cpu_ms"] for r in rows)
    honest_pass = sum(r["honest"] for r in rows)
    swapped_fail = sum(not r["swapped"] for r in rows)
    print(f"median: generation {med['gen_cpu_ms']:.0f} CPU ms, check {med['check_cpu_ms']:.0f} "
          f"CPU ms ({med['share']:.1%} of its job's), swapped check "
          f"{med['swapped_cpu_ms']:.0f} CPU ms; all checks / all generations: {total:.1%}")
    print(f"honest outputs passed: {honest_pass}/{len(rows)} (all must); "
          f"swapped outputs failed: {swapped_fail}/{len(rows)} (all must at temperature 0)")
    save("spot_check", {"model": name, "args": vars(args), "rows": rows, "median": med,
                        "check_over_generation": total, "honest_passed": honest_pass,
                        "swapped_failed": swapped_fail})


if __name__ == "__main__":
    main()
