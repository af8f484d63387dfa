"""What each sampling parameter costs a row per decode step, beside the step itself.

    .venv/bin/python -m bench.sampling_rules [--model DIR] [--steps 300] [--batch 8]

For each kind of row (plain greedy, logprobs with 5 alternatives, logit_bias,
penalties, a JSON schema, json_object) it times ``Sequence.pick`` (rules,
sampler, logprobs, the grammar's mask and advance) on the model's real logits,
``--steps`` times, and reports the mean per step; a plain greedy row in a batch
pays nothing there (the batch's one argmax). For scale it times one decode
forward pass of ``--batch`` rows (the padded backend). A grammar row's matcher
is built off the decode thread; its build time (once per request) is shown too.

Uses the model in ``--model`` (e.g. a pulled SmolLM2 directory), else the tiny
random model of the tests. Prints a table and writes
bench/results/sampling_rules.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.report import save
from bus.sampling import Grammar, Sampling
from workers.engine import Engine
from workers.generation import GenerationRequest

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
ROWS = {
    "plain greedy": {},
    "logprobs=5": {"logprobs": 5},
    "logit_bias (3 ids)": {"logit_bias": {10: 5.0, 11: -5.0, 12: 100.0}},
    "penalties": {"presence_penalty": 0.5, "frequency_penalty": 0.5},
    "json_schema": {"grammar": Grammar(kind="json_schema", text=json.dumps(SCHEMA))},
    "json_object": {"grammar": Grammar(kind="json_object")},
}


def request(steps: int, **sampling) -> GenerationRequest:
    return GenerationRequest(kind="chat", prompt=None, messages=(
        {"role": "user", "content": "Describe a person as JSON."},),
        sampling=Sampling(max_tokens=steps, temperature=0, **sampling))


def time_row(engine: Engine, logits: torch.Tensor, steps: int, **sampling) -> dict:
    """Mean ms per ``pick`` over up to ``steps`` steps (a grammar may end sooner)."""
    built = time.perf_counter()
    seq = engine.sequence(request(steps, **sampling))
    ready = threading.Event()
    seq.when_ready(ready.set)
    ready.wait()
    built = time.perf_counter() - built
    if seq.fast_greedy:  # the batch's argmax: no per-row work at all
        return {"pick_ms": 0.0, "steps": steps, "prepare_ms": round(built * 1e3, 2)}
    n, start = 0, time.perf_counter()
    while n < steps and not seq.finished:
        seq.advance(seq.pick(logits))
        n += 1
    spent = time.perf_counter() - start
    return {"pick_ms": round(spent / n * 1e3, 3), "steps": n, "prepare_ms": round(built * 1e3, 2)}


@torch.inference_mode()
def step_ms(engine: Engine, batch: int, rounds: int = 20) -> float:
    """One decode pass of ``batch`` rows on a short cache (the model's own forward)."""
    ids = torch.tensor([[1] * 16] * batch, device=engine.device)
    out = engine.model(input_ids=ids, use_cache=True)
    token = torch.tensor([[1]] * batch, device=engine.device)
    start = time.perf_counter()
    for _ in range(rounds):
        engine.model(input_ids=token, past_key_values=out.past_key_values, use_cache=True,
                     logits_to_keep=1)
    return (time.perf_counter() - start) / rounds * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.model is None:
        from tests.tiny_model import build_tiny_model
        args.model = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-random")
    engine = Engine.load(args.model)
    started = time.perf_counter()
    engine.vocabulary()
    vocabulary_s = time.perf_counter() - started
    logits, _ = engine.forward(engine.prompt_ids(request(1)), None)
    rows = {name: time_row(engine, logits, args.steps, **kw) for name, kw in ROWS.items()}
    forward = step_ms(engine, args.batch)
    print(f"{engine.name} on {engine.device}, vocabulary {engine.vocab_width}: "
          f"tokenizer for grammars built once in {vocabulary_s:.2f} s; "
          f"a decode pass of {args.batch} rows takes {forward:.2f} ms")
    print(f"{'row':<22}{'ms per step':>12}{'steps':>8}{'prepare ms':>12}")
    for name, r in rows.items():
        print(f"{name:<22}{r['pick_ms']:>12.3f}{r['steps']:>8}{r['prepare_ms']:>12.2f}")
    save("sampling_rules", {"model": engine.name, "device": engine.device,
                            "vocab": engine.vocab_width, "vocabulary_s": vocabulary_s,
                            "forward_ms": forward, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
