"""One request's decode state, apart from the forward passes that feed it.

A ``Sequence`` turns each token sampled for one request into a
:class:`~workers.generation.Step`: it
owns the request's sampler (temperature, top_p, seed), its text stream
(incremental detokenization, stop strings), its token counts and its finish
rules. The single-stream loop in ``workers.engine`` and the batch scheduler in
``workers.batching`` both drive the same ``Sequence``, so a request behaves the
same whether it runs alone or shares its forward passes with others.

A request with logit_bias, penalties, ignore_eos or a grammar changes its
logits before it samples, and one with ``logprobs`` reports them
(``workers.logits``): what that needs (a grammar's matcher, the vocabulary's
bytes) is prepared off the decode thread, and the sequence is ``ready`` once it
is. A plain sequence (``plain``) needs none of it, and a batch may pick its
greedy token with everyone else's.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable

import torch

from bus.sampling import Sampling, TokenLogprob
from workers.generation import Step
from workers.logits import LogitRules, LogprobReport, fill_masks

_REPLACEMENT = "\ufffd"  # what a decode of an unfinished UTF-8 sequence ends in


class Sequence:
    """The decode state of one request; forward passes are someone else's.

    Protocol: once ``ready``, ``start()`` before the prefill (a Step means there is
    nothing to generate); then, for each of this sequence's newest logits,
    ``pick(logits)`` (or, for a ``plain`` greedy one, the argmax), ``advance(token)``
    and, unless that finished it, ``check_stop()``. ``input_ids`` is what the
    prefill runs: the prompt, then any continuation. ``prepared`` gives the
    sequence's rules and logprob report when it needs either (see module doc).
    """

    def __init__(self, prompt_ids: list[int], done: list[int], sampling: Sampling,
                 tokenizer: Any, eos_token_ids: frozenset[int], device: str,
                 should_stop: Callable[[], bool],
                 prepared: "Future[tuple[LogitRules | None, LogprobReport | None]] | None"
                 = None) -> None:
        self.input_ids = prompt_ids + done
        self.n_prompt = len(prompt_ids)
        self.max_tokens = sampling.max_tokens
        self.sampler = Sampler(sampling, device)
        # The last few delivered tokens give the detokenizer its context (a leading
        # space or a joined character decodes as it would have in one run).
        self.stream = TextStream(tokenizer, sampling.stop, context=done[-4:])
        self.eos_token_ids = eos_token_ids
        self.should_stop = should_stop
        # completion_tokens counts the tokens that are part of the output: an EOS
        # token ends the generation but is neither emitted nor counted.
        # Re-tokenized, delivered text may count a token or two more than it took to
        # make; it never counts beyond max_tokens, the most the caller agreed to pay for.
        self.n_out = min(len(done), sampling.max_tokens)
        self.last_token: int | None = None
        self.finished = False
        self._prepared = prepared
        self.plain = prepared is None
        self.rules: LogitRules | None = None
        self.report: LogprobReport | None = None
        self._logprobs: list[TokenLogprob] = []  # drawn, not yet sent with a Step

    @property
    def ready(self) -> bool:
        """What the sequence needs to pick a token is there (or failed to be)."""
        return self._prepared is None or self._prepared.done()

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the sequence is ``ready``: now, or on another thread."""
        if self._prepared is None:
            callback()
        else:
            self._prepared.add_done_callback(lambda _: callback())

    @property
    def fast_greedy(self) -> bool:
        """Greedy on the model's own logits: the batch's argmax is this row's token."""
        return self.plain and self.sampler.greedy

    @property
    def remaining(self) -> int:
        """The most tokens this sequence may still add to its KV cache."""
        return self.max_tokens - self.n_out

    def start(self) -> Step | None:
        """Before any compute: the one and final Step when nothing is to be generated."""
        if self.should_stop() or self.n_out >= self.max_tokens:
            return self._finish("", "stop" if self.n_out < self.max_tokens else "length")
        return None

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this sequence's logits (one row): its rules applied,
        its sampler's draw, its log probability kept for the Step it makes. Raises
        GrammarError when the grammar admits no token, or could not be built for
        this model's vocabulary (waiting for it first, when it is not ``ready``)."""
        if self._prepared is not None:
            prepared, self._prepared = self._prepared, None
            self.rules, self.report = prepared.result()
        if self.rules is not None:
            logits = self.rules.apply(logits)
        token = self.sampler(logits)
        if self.report is not None:
            self._logprobs.append(self.report(logits, token))
        if self.rules is not None:
            self.rules.taken(token)
        return token

    def advance(self, token: int) -> Step:
        """Take the next token: the Step it makes, final when it ends the sequence."""
        self.last_token = token
        if token in self.eos_token_ids:
            if self._logprobs:
                self._logprobs.pop()  # an EOS is not output: nor are its logprobs
            return self._finish(self.stream.flush()[0], "stop")
        self.n_out += 1
        text, stopped = self.stream.push(token)
        if stopped:
            return self._finish(text, "stop")
        complete = self.rules is not None and self.rules.finished  # the grammar's end
        if complete or self.n_out >= self.max_tokens:
            rest, stopped = self.stream.flush()
            return self._finish(text + rest, "stop" if stopped or complete else "length")
        return self._step(text, None)

    def check_stop(self) -> Step | None:
        """Between two tokens: a final Step when ``should_stop`` says so."""
        if self.should_stop():
            return self._finish(self.stream.flush()[0], "stop")
        return None

    def _finish(self, text: str, reason: str) -> Step:
        self.finished = True
        return self._step(text, reason)

    def _step(self, text: str, reason: str | None) -> Step:
        """A Step; the logprobs drawn so far go with it when it has text or is the last
        (text held back, e.g. half a character, keeps its tokens' logprobs waiting)."""
        logprobs = ()
        if self._logprobs and (text or reason is not None):
            logprobs, self._logprobs = tuple(self._logprobs), []
        return Step(text, self.n_out, self.n_prompt, reason, logprobs)


def pick_tokens(seqs: list[Sequence], logits: torch.Tensor, greedy: Callable[[], list[int]],
                where: list[int] | None = None) -> list[int | Exception]:
    """Each sequence's next token from its row of a batch's ``logits`` (``where``: each
    one's row, default i): the plain greedy ones' from one argmax (``greedy()``: every
    row's), the others' by ``pick``; an exception in place of a token whose pick failed
    (a grammar in error): the others go on."""
    where = where or range(len(seqs))
    picks = greedy() if any(s.fast_greedy for s in seqs) else None
    fill_masks([s.rules for s in seqs if s.rules is not None])  # grammar rows in parallel
    tokens: list[int | Exception] = []
    for r, seq in zip(where, seqs):
        try:
            tokens.append(picks[r] if seq.fast_greedy else seq.pick(logits[r]))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, per sequence
            tokens.append(exc)
    return tokens


class Sampler:
    """Picks the next token from logits: greedy at temperature 0, else nucleus sampling.

    Each request has its own generator, so a seeded request draws the same tokens
    whatever else shares its batch.
    """

    def __init__(self, sampling: Sampling, device: str) -> None:
        self.temperature, self.top_p = sampling.temperature, sampling.top_p
        self.greedy = sampling.temperature == 0
        self.generator = torch.Generator(device=device)
        if sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(sampling.seed)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor) -> int:
        if self.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest head of tokens whose mass reaches top_p: a token
            # stays when the mass before it is still below top_p (the first always does).
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TextStream:
    """Turns output tokens into output text, complete characters only, cut at a stop string.

    Decoding uses a sliding window of tokens (TGI's prefix/read offsets): the text
    of ``ids[prefix:]`` minus the text of ``ids[prefix:read]`` is what is new, so
    each step decodes a few tokens rather than the whole output. New text ending
    in U+FFFD is an unfinished character and waits for the next token.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], context: list[int] = ()) -> None:
        self.tokenizer = tokenizer
        # A fast tokenizer's Rust decoder gives the same text as its Python wrapper
        # without clean-up (see _decode) at a fraction of the cost: it runs twice per
        # token of every sequence in a batch.
        self._raw_decode = getattr(getattr(tokenizer, "backend_tokenizer", None), "decode", None)
        self.stop = tuple(s for s in stop if s)  # an empty stop string would match at once
        self.ids: list[int] = list(context)  # already emitted: decoded for context only
        self.prefix, self.read = 0, len(self.ids)
        self.pending = ""  # decoded text held back: it may be the start of a stop string

    def push(self, token: int) -> tuple[str, bool]:
        """Add one token: (text now safe to emit, whether a stop string was hit)."""
        self.ids.append(token)
        seen = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(seen) and not text.endswith(_REPLACEMENT):
            self.pending += text[len(seen):]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release()

    def flush(self) -> tuple[str, bool]:
        """The end of the output: all text held back, unfinished or not, still cut at a stop."""
        seen = self._decode(self.ids[self.prefix:self.read])
        self.pending += self._decode(self.ids[self.prefix:])[len(seen):]
        self.prefix = self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool = False) -> tuple[str, bool]:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            text, self.pending = self.pending[:min(hits)], ""
            return text, True
        keep = 0 if final else self._stop_prefix_len(self.pending)
        cut = len(self.pending) - keep
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text, False

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that some stop string starts with."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _decode(self, ids: list[int]) -> str:
        # No clean-up of spaces: it can rewrite text across a token boundary
        # after that text was already emitted.
        if self._raw_decode is not None:
            return self._raw_decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
