"""Worker engine throughput and time to first token, against the model's own
``generate`` and prefill, measured in the same run on the same hardware.

    .venv/bin/python -m bench.worker [--streams 1,8,32] [--tokens 32] [--rounds 3]
                                     [--model DIR] [--max-batch 32]

The worker path is the one a job takes: ``Batcher.stream_async`` (continuous
batching, one event loop consuming every stream). Baselines: at 1 stream
``model.generate`` (greedy, dynamic cache) of the same prompt; at N streams
``model.generate`` on a left-padded batch of the same N prompts. Every stream
makes exactly ``--tokens`` tokens on both sides (EOS is ignored). Time to first
token: a request with ``max_tokens=1`` on an idle batcher, against one forward
pass of its prompt (the prefill). Rounds interleave baseline and worker runs and
the table shows the median of each, so a noisy neighbour hits both alike; a
first, untimed round warms every batch shape up (``--warmup``). ``--static``
adds transformers' static-cache ``generate`` (compiled on CUDA), measured first
in a process of its own.

Uses SmolLM2-135M-Instruct when it is pulled into the data dir
(``inferbus models pull smollm2-135m-instruct``), else the tiny random model of
the tests. Prints a table and writes bench/results/worker.json.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import copy
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import save
from bus.events import Sampling
from workers.batching import Batcher
from workers.engine import Engine
from workers.generation import GenerationRequest
from workers.omp import release_openmp_pool

TOPICS = ["a cat", "the sea at night", "why the sky is blue", "a robot learning to paint",
          "the history of bread", "a lighthouse keeper", "trains in winter", "a small garden"]


def find_model(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), Path(arg).name
    data = Path(os.environ.get("INFERBUS_DATA_DIR", Path.home() / ".local/share/inferbus"))
    smol = data / "models" / "smollm2-135m-instruct"
    if (smol / "config.json").exists():
        return smol, smol.name
    from tests.tiny_model import build_tiny_model
    return build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-random"), "tiny-random (no SmolLM2)"


def request(i: int, tokens: int) -> GenerationRequest:
    # Prompts of different lengths, as concurrent users send.
    content = f"Write about {TOPICS[i % len(TOPICS)]}." + " Be vivid." * (i % 5)
    return GenerationRequest(kind="chat", messages=({"role": "user", "content": content},),
                             prompt=None, sampling=Sampling(max_tokens=tokens, temperature=0))


def sync(engine: Engine) -> None:
    if engine.device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_generate(engine: Engine, n: int, tokens: int, cache: str = "dynamic") -> float:
    """tokens/s of ``model.generate`` on the n prompts as one left-padded batch
    (``cache="static"``: transformers' static cache, which it compiles on CUDA)."""
    config = copy.deepcopy(engine.model.generation_config)
    config.update(do_sample=False, max_new_tokens=tokens, min_new_tokens=None,
                  eos_token_id=None, temperature=None, top_p=None, top_k=None)
    if cache == "static":
        config.cache_implementation = "static"
    pad = engine.tokenizer.pad_token_id or 0
    config.pad_token_id = pad
    ids = [engine._encode(request(i, tokens)) for i in range(n)]
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=engine.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids],
                        device=engine.device)
    sync(engine)
    start = time.perf_counter()
    out = engine.model.generate(input_ids=input_ids, attention_mask=mask,
                                generation_config=config)
    sync(engine)
    elapsed = time.perf_counter() - start
    made = (out.shape[1] - width) * n
    assert made == tokens * n, f"generate made {made} tokens, not {tokens * n}"
    return made / elapsed


def static_samples(path: str, dtype: str | None, streams: list[int], tokens: int,
                   rounds: int) -> dict[str, list[float]]:
    """Static-cache ``generate`` tokens/s, ``rounds`` samples per stream count, in a
    process of its own: its compiled CUDA graphs (inductor's) and the worker's own
    graphs in one process once ended in a CUDA launch failure."""
    engine = Engine.load(Path(path), dtype=dtype)
    for n in streams:
        plain_generate(engine, n, tokens, "static")  # compiles once per shape, untimed
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for n in streams:
            samples.setdefault(f"static_{n}", []).append(
                plain_generate(engine, n, tokens, "static"))
    return samples


async def worker_streams(batcher: Batcher, n: int, tokens: int) -> float:
    """tokens/s of n concurrent streams through the batcher, as the worker runs jobs."""
    async def one(i: int) -> int:
        async for step in batcher.stream_async(request(i, tokens)):
            last = step
        return last.completion_tokens

    start = time.perf_counter()
    made = sum(await asyncio.gather(*(one(i) for i in range(n))))
    elapsed = time.perf_counter() - start
    assert made == tokens * n, f"the worker made {made} tokens, not {tokens * n}"
    return made / elapsed


def single_loop(engine: Engine, tokens: int) -> float:
    """tokens/s of ``Engine.generate``, the unbatched decode loop, for reference."""
    start = time.perf_counter()
    for step in engine.generate(request(0, tokens)):
        last = step
    return last.completion_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def prefill_s(engine: Engine, i: int) -> float:
    ids = torch.tensor([engine._encode(request(i, 1))], device=engine.device)
    sync(engine)
    start = time.perf_counter()
    engine.model(input_ids=ids, use_cache=True, logits_to_keep=1)
    sync(engine)
    return time.perf_counter() - start


async def first_token_s(batcher: Batcher, i: int) -> float:
    start = time.perf_counter()
    async for _ in batcher.stream_async(request(i, 1)):  # max_tokens=1: the one step
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--ttft", type=int, default=10, help="time-to-first-token samples")
    parser.add_argument("--model")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="model dtype, both sides (default: the engine's choice)")
    parser.add_argument("--decoder", default="auto", choices=["auto", "slots", "padded"],
                        help="the batcher's decode backend (workers.batching)")
    parser.add_argument("--static", action="store_true",
                        help="also the static-cache generate baseline (the GPU target's)")
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    path, name = find_model(args.model)
    engine = Engine.load(path, dtype=args.dtype)
    engine.eos_token_ids = frozenset()  # fixed-length streams on both sides
    batcher = Batcher(engine, max_batch=max(args.max_batch, *streams), decoder=args.decoder)
    runs: dict[str, list[float]] = {}
    if args.static:  # first, on an idle device
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            runs.update(pool.submit(static_samples, str(path), args.dtype, streams,
                                    args.tokens, args.rounds).result())
        for key, samples in runs.items():
            print(f"  {key}: {', '.join(f'{x:.1f}' for x in samples)} tok/s", flush=True)
    loop = asyncio.new_event_loop()
    # The baselines run on this thread, the worker on the batcher's. After each baseline
    # this thread's OpenMP pool is freed, and the batcher frees its own when idle, so
    # each side runs with its pool alone, as the worker's batcher does in its process:
    # two pools alive slow both (workers.omp).
    plain_generate(engine, 1, 4)  # warm-up: first-call allocations, lazy inits
    release_openmp_pool()
    loop.run_until_complete(worker_streams(batcher, 1, 4))

    def sample(key: str, tokens_per_s: float) -> None:
        runs.setdefault(key, []).append(tokens_per_s)
        print(f"  {key}: {tokens_per_s:.1f} tok/s", flush=True)

    for round_ in range(args.warmup + args.rounds):
        if round_ == args.warmup:  # warm-up rounds (allocator growth, graph captures) do not count
            runs = {k: v for k, v in runs.items() if k.startswith("static_")}
        sample("single_loop_1", single_loop(engine, args.tokens))
        for n in streams:
            sample(f"generate_{n}", plain_generate(engine, n, args.tokens))
            release_openmp_pool()
            sample(f"worker_{n}", loop.run_until_complete(worker_streams(batcher, n, args.tokens)))
    prefill, ttft = [], []
    for i in range(args.ttft):
        prefill.append(prefill_s(engine, i))
        release_openmp_pool()
        ttft.append(loop.run_until_complete(first_token_s(batcher, i)))
    batcher.close()
    median = {k: statistics.median(v) for k, v in runs.items()}
    rows = [{"streams": n, "generate_tok_s": median[f"generate_{n}"],
             "worker_tok_s": median[f"worker_{n}"],
             "ratio": median[f"worker_{n}"] / median[f"generate_{n}"],
             **({"static_tok_s": median[f"static_{n}"],
                 "ratio_static": median[f"worker_{n}"] / median[f"static_{n}"]}
                if args.static else {})} for n in streams]
    result = {
        "model": name, "device": engine.device, "dtype": str(engine.model.dtype),
        "decoder": type(batcher.decoder).__name__,
        "threads": torch.get_num_threads(),
        "tokens_per_stream": args.tokens, "rounds": args.rounds, "warmup_rounds": args.warmup,
        "rows": rows,
        "single_loop_1_tok_s": median["single_loop_1"],
        "scaling": {f"worker_{n}_vs_worker_1": median[f"worker_{n}"] / median["worker_1"]
                    for n in streams if n != 1 and 1 in streams},
        "ttft": {"prefill_ms": statistics.median(prefill) * 1000,
                 "worker_ms": statistics.median(ttft) * 1000},
        "samples": runs, "batcher_stats": batcher.stats,
    }
    result["ttft"]["overhead_ms"] = result["ttft"]["worker_ms"] - result["ttft"]["prefill_ms"]
    result["ttft"]["ratio"] = result["ttft"]["worker_ms"] / result["ttft"]["prefill_ms"]
    print(f"model {name} ({engine.model.dtype}) on {engine.device}, "
          f"{torch.get_num_threads()} threads, "
          f"{args.tokens} tokens per stream, median of {args.rounds} interleaved rounds")
    print(f"{'streams':>8} {'generate tok/s':>15} {'worker tok/s':>13} {'worker/generate':>16}")
    for row in rows:
        static = f"   static generate {row['static_tok_s']:.1f} tok/s, worker/static " \
            f"{row['ratio_static']:.2f}x" if args.static else ""
        print(f"{row['streams']:>8} {row['generate_tok_s']:>15.1f} {row['worker_tok_s']:>13.1f} "
              f"{row['ratio']:>15.2f}x{static}")
    print(f"Engine.generate (unbatched loop), 1 stream: {median['single_loop_1']:.1f} tok/s")
    for key, value in result["scaling"].items():
        print(f"{key}: {value:.2f}x")
    t = result["ttft"]
    print(f"time to first token: prefill {t['prefill_ms']:.2f} ms, worker {t['worker_ms']:.2f} ms, "
          f"overhead {t['overhead_ms']:.2f} ms ({t['ratio']:.2f}x)")
    print(f"wrote {save('worker', result)}")


if __name__ == "__main__":
    main()
