"""Shared prompt prefixes, prefilled once: the KV cache of a chat template's head.

Most prompts a node serves begin alike: the chat template's system prompt and
role markers come before any user text (SmolLM2's adds ~24 tokens to every
chat). A ``PrefixCache`` keeps the KV cache of a few such prefixes, each
computed once by a batch-of-one forward pass of the prefix alone; a joint
prefill whose prompts all begin with one then runs only the rest of each
prompt on top of it.

Which prefixes: the longest common prefix of a joint prefill's prompts, or of
a lone prompt and the previous one, once it is at least ``min_tokens`` long
and shorter than every prompt (each prompt keeps a token of its own, whose
logits the prefill returns), and at least ``min_tokens`` longer than the
longest cached prefix they share already (a few more tokens are not worth a
pass of their own). Causal attention makes a prefix's keys and values
independent of what follows it, so the cached ones are those a full prefill
would compute. At most ``max_entries`` are kept, holding at most ``max_bytes``
of keys and values, the least recently used dropped first (a SmolLM2 prefix
of 24 tokens in float32 is ~1 MB).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, P, dim]
Compute = Callable[[list[int]], KV | None]  # None: this model's cache cannot be reused


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """The length of the longest prefix every prompt shares."""
    first, n = prompts[0], min(map(len, prompts))
    for other in prompts[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return n


class PrefixCache:
    """Prefixes' KV caches by their tokens. ``compute(tokens)`` prefills one."""

    def __init__(self, compute: Compute, bytes_per_token: int, max_bytes: int,
                 min_tokens: int = 16, max_entries: int = 8) -> None:
        self._compute, self.min_tokens, self.max_entries = compute, min_tokens, max_entries
        self._max_tokens = max_bytes // max(1, bytes_per_token)  # held by all entries
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self._previous: list[int] | None = None  # the last lone prompt, for the next one
        self.enabled = True
        self.stats = {"hits": 0, "computed": 0, "reused_tokens": 0}

    def find(self, prompts: Sequence[list[int]]) -> tuple[int, KV] | None:
        """A cached prefix every prompt begins with (computed now if these prompts
        reveal a new one), as (its length, its KV); None if there is none."""
        if not self.enabled:
            return None
        shortest = min(map(len, prompts)) - 1  # each prompt keeps a token of its own
        best = max((key for key in self._entries
                    if len(key) <= shortest and all(p[:len(key)] == list(key) for p in prompts)),
                   key=len, default=None)
        candidate = self._candidate(prompts, shortest)
        if candidate is not None and len(candidate) <= self._max_tokens and (
                best is None or len(candidate) >= len(best) + self.min_tokens):
            kv = self._compute(list(candidate))
            if kv is None:
                self.enabled, self._entries = False, OrderedDict()
                return None
            self._entries[candidate] = kv
            self.stats["computed"] += 1
            while len(self._entries) > self.max_entries or \
                    sum(map(len, self._entries)) > self._max_tokens:
                self._entries.popitem(last=False)
            best = candidate
        if best is None:
            return None
        self._entries.move_to_end(best)
        self.stats["hits"] += 1
        self.stats["reused_tokens"] += len(best) * len(prompts)
        return len(best), self._entries[best]

    def _candidate(self, prompts: Sequence[list[int]], shortest: int) -> tuple[int, ...] | None:
        """The prefix these prompts (a lone one: with the previous lone one) share."""
        if len(prompts) == 1:
            group, self._previous = [prompts[0], self._previous], prompts[0]
            if group[1] is None:
                return None
        else:
            group = list(prompts)
        n = min(common_prefix(group), shortest)
        return tuple(prompts[0][:n]) if n >= self.min_tokens else None

    def clear(self) -> None:
        self._entries.clear()
        self._previous = None
