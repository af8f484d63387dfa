"""Where an N-stream worker run's time goes: the joint prefill of N prompts
against the decode steps, beside the same split for one stream, in one run.

    .venv/bin/python -m bench.prefill_share [--streams 32] [--tokens 32] [--rounds 3]
                                            [--model DIR] [--no-prefix-cache]

``bench.worker``'s N-stream target compares tokens/s at N streams with one
stream. Both include each prompt's prefill; at N streams that prefill is one
left-padded pass over N prompts, and with short generations it can cost as
much as the decode steps. This drives the padded decode backend
(``workers.decoders.padded.PaddedDecoder``, the batcher's backend on CPUs) directly on
``bench.worker``'s prompts, greedy, with a fresh prefix cache for each run
(``workers.prefix``: the prompts' shared head is prefilled once;
``--no-prefix-cache`` prefills every prompt whole), and prints, per round: prefill seconds,
decode seconds, tokens/s with and without the prefill, and the N-stream over
1-stream ratio both ways. Writes bench/results/prefill_share.json.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.report import save
from bench.worker import find_model, request
from workers.decoders.padded import PaddedDecoder
from workers.engine import Engine


@torch.inference_mode()
def split(engine: Engine, n: int, tokens: int, prefixes: bool) -> tuple[float, float]:
    """Seconds of the joint prefill of n prompts (their first tokens) and of the
    ``tokens - 1`` decode steps after it."""
    seqs = [engine.sequence(request(i, tokens), None) for i in range(n)]
    for seq in seqs:
        seq.start()
    decoder = PaddedDecoder(engine, 8 << 30, prefixes=prefixes)
    start = time.perf_counter()
    first = decoder.prefill(seqs).argmax(dim=-1).tolist()
    prefill = time.perf_counter() - start
    decoder.admit(list(range(n)), first)
    for seq, token in zip(seqs, first):
        seq.advance(token)
    start = time.perf_counter()
    for _ in range(tokens - 1):
        for seq, token in zip(seqs, decoder.launch(seqs).greedy()):
            seq.advance(token)
    return prefill, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model")
    parser.add_argument("--no-prefix-cache", action="store_true")
    args = parser.parse_args()
    path, name = find_model(args.model)
    engine = Engine.load(path)
    engine.eos_token_ids = frozenset()  # every stream makes exactly --tokens
    n, tokens = args.streams, args.tokens
    prompts = [len(engine._encode(request(i, tokens))) for i in range(n)]
    prefixes = not args.no_prefix_cache
    split(engine, 2, 2, prefixes)  # warm-up
    rows = []
    for _ in range(args.rounds):
        many, one = split(engine, n, tokens, prefixes), split(engine, 1, tokens, prefixes)
        rows.append({
            f"prefill_{n}_s": many[0], f"decode_{n}_s": many[1],
            "prefill_1_s": one[0], "decode_1_s": one[1],
            "ratio": (n * tokens / sum(many)) / (tokens / sum(one)),
            "ratio_decode_only": (n * (tokens - 1) / many[1]) / ((tokens - 1) / one[1]),
            "prefill_share": many[0] / sum(many)})
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(f"model {name}, {torch.get_num_threads()} threads, {n} prompts of {min(prompts)}-"
          f"{max(prompts)} tokens ({sum(prompts)} in all, {n * max(prompts)} padded), "
          f"{tokens} tokens each, prefix cache {'on' if prefixes else 'off'}, "
          f"median of {args.rounds} rounds")
    print(f"{n} streams: prefill {med[f'prefill_{n}_s']:.2f} s, {tokens - 1} decode steps "
          f"{med[f'decode_{n}_s']:.2f} s; prefill share {med['prefill_share']:.0%}")
    print(f"1 stream:   prefill {med['prefill_1_s']:.2f} s, {tokens - 1} decode steps "
          f"{med['decode_1_s']:.2f} s")
    print(f"{n} streams / 1 stream: {med['ratio']:.1f}x with the prefill, "
          f"{med['ratio_decode_only']:.1f}x decode steps alone")
    save("prefill_share", {"model": name, "streams": n, "tokens": tokens, "prefixes": prefixes,
                           "prompt_tokens": prompts, "rounds": rows, "median": med})


if __name__ == "__main__":
    main()
