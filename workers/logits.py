"""What one sequence does to its logits before it samples, and the log probabilities it reports.

:class:`LogitRules` holds the request's ``logit_bias``, presence and frequency
penalties, ``ignore_eos`` and grammar (``workers.grammar.Constraint``); it is
built only for a sequence that asks for one of them, so a plain row of a batch
pays nothing. Order, as OpenAI and vLLM apply them: bias, then penalties
(``logit -= presence * (count > 0) + frequency * count`` over the tokens this
sequence generated, a continuation's included), then the EOS ban, then the
grammar's mask. With a grammar, ``ignore_eos`` holds until the grammar is
complete: from there only the grammar's end may follow.

:class:`LogprobReport` is ``logprobs``/``top_logprobs``: the log-softmax of the
logits after those rules and before temperature, the drawn token's and the
``n`` most likely ones', each with its text and UTF-8 bytes. ``-inf`` (a token
the grammar or the EOS ban rules out) is reported as ``LOGPROB_FLOOR``: JSON
cannot carry it.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from llguidance import LLExecutor

from bus.sampling import Sampling, TokenLogprob, TopLogprob
from workers.generation import LOGPROB_FLOOR
from workers.grammar import Constraint, GrammarTokens

log = logging.getLogger("inferbus.worker")
_MAX_PIECE = 256  # characters and bytes of one token's text (the contract's bound)


def needs_rules(sampling: Sampling) -> bool:
    """Whether a sequence's logits need changing before it samples."""
    return bool(sampling.logit_bias or sampling.presence_penalty or sampling.frequency_penalty
                or sampling.ignore_eos or sampling.grammar is not None)


class LogitRules:
    """One sequence's changes to its logits; ``apply`` before sampling, ``taken`` after."""

    def __init__(self, sampling: Sampling, width: int, device: str,
                 eos_token_ids: frozenset[int], generated: list[int],
                 constraint: Constraint | None) -> None:
        self.bias = None
        if sampling.logit_bias:
            self.bias = torch.zeros(width, device=device)
            ids = torch.tensor(list(sampling.logit_bias), dtype=torch.long, device=device)
            self.bias[ids] = torch.tensor(list(sampling.logit_bias.values()), device=device)
        self.presence, self.frequency = sampling.presence_penalty, sampling.frequency_penalty
        self.counts = None
        if self.presence or self.frequency:
            self.counts = torch.zeros(width, device=device)
            if generated:
                ids = torch.tensor(generated, dtype=torch.long, device=device)
                self.counts.index_add_(0, ids, torch.ones(len(generated), device=device))
        eos = sorted(t for t in eos_token_ids if t < width)
        self.eos = torch.tensor(eos, device=device) if sampling.ignore_eos and eos else None
        self.constraint = constraint
        if constraint is not None:
            for token in generated:  # a continuation is output the grammar already covers
                constraint.consume(token)
            self.mask = torch.empty((width + 31) // 32, dtype=torch.int32)  # filled on the host
            self.bits = torch.arange(32, dtype=torch.int32, device=device)
        self.filled: torch.Tensor | None = None  # this step's mask, when fill_masks made it
        self.width = width

    @torch.inference_mode()
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits this sequence samples from (a new tensor: the batch's stays as it is).
        Raises GrammarError when the grammar admits no token."""
        x = logits.float().clone()
        if self.bias is not None:
            x += self.bias
        if self.counts is not None:
            x -= self.presence * (self.counts > 0).float() + self.frequency * self.counts
        if self.eos is not None and not (self.constraint and self.constraint.accepting):
            x[self.eos] = -math.inf
        if self.constraint is not None:
            mask, self.filled = self.filled, None
            if mask is None:
                self.constraint.fill(self.mask.data_ptr(), self.mask.numel() * 4)
                mask = self.mask
            self.constraint.raise_if_error()
            words = mask.to(x.device, non_blocking=False)
            allowed = ((words.unsqueeze(1) >> self.bits) & 1).view(-1)[:self.width].bool()
            # A plain masked_fill: llguidance's own apply is torch.compile'd (seconds, gcc).
            x.masked_fill_(~allowed, -math.inf)
        return x

    def taken(self, token: int) -> None:
        """Record the token drawn (penalty counts, the grammar's state)."""
        if self.counts is not None:
            self.counts[token] += 1
        if self.constraint is not None:
            self.constraint.consume(token)

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing may follow it."""
        return self.constraint is not None and self.constraint.stopped


def fill_masks(rules: list[LogitRules]) -> None:
    """Fill this step's grammar masks of several rows at once, on llguidance's own
    threads (without the GIL), instead of one after the other in each ``apply``."""
    rows = [r for r in rules if r.constraint is not None]
    if len(rows) < 2:
        return
    words = rows[0].mask.numel()  # one engine: one width
    block = torch.empty((len(rows), words), dtype=torch.int32)
    try:
        _executor().unsafe_compute_mask_ptr(
            [(r.constraint.matcher, i) for i, r in enumerate(rows)], block.data_ptr(),
            words * 4, len(rows))
    except Exception:  # noqa: BLE001 - each row then fills its own (and meets its own error)
        log.exception("parallel grammar masks failed")
        return
    for i, r in enumerate(rows):
        r.filled = block[i]


@functools.lru_cache(maxsize=1)
def _executor() -> LLExecutor:
    return LLExecutor()  # llguidance's default: 80% of the cores, at most 32 threads


class LogprobReport:
    """``logprobs`` for each token a sequence draws, ``top`` alternatives with each."""

    def __init__(self, top: int, pieces: "TokenPieces") -> None:
        self.top, self.pieces = top, pieces

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.top:
            best = torch.topk(logp, min(self.top, logp.shape[-1]))
            values = torch.cat([logp[token:token + 1], best.values]).tolist()  # one read-back
            ids = best.indices.tolist()
        else:
            values, ids = [float(logp[token])], []
        top = tuple(TopLogprob(logprob=_finite(v), **self.pieces(i))
                    for i, v in zip(ids, values[1:]))
        return TokenLogprob(logprob=_finite(values[0]), top_logprobs=top, **self.pieces(token))


class TokenPieces:
    """A token's text and bytes as OpenAI reports them, cached per engine."""

    def __init__(self, tokens: GrammarTokens) -> None:
        self.tokens = tokens
        self._cache: dict[int, dict[str, Any]] = {}

    def __call__(self, token: int) -> dict[str, Any]:
        piece = self._cache.get(token)
        if piece is None:
            raw = self.tokens.token_bytes(token)[:_MAX_PIECE]
            # A piece of a character decodes to U+FFFD; its bytes say what it is.
            piece = {"token": raw.decode("utf-8", errors="replace")[:_MAX_PIECE],
                     "bytes": tuple(raw)}
            self._cache[token] = piece
        return piece


def _finite(value: float) -> float:
    return LOGPROB_FLOOR if not value > LOGPROB_FLOOR else min(value, 0.0)
