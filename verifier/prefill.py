"""The prefill judge: could this model have produced the claimed text for the job?

One forward pass over the prompt's ids and the claimed text, re-tokenized, gives
the model's next-token distribution at every claimed position; each claimed
token is then ranked in what the job's sampler would have drawn from there.

A claimed token is *implausible* when the sampler could not have picked it, with
room for numeric noise (another GPU, another dtype):

- temperature 0 (greedy): its logit is more than ``margin`` (1.0) below the
  position's highest. SmolLM2 made in bf16 and read in fp32 flips near-ties,
  all within 0.25 of the top; another prompt's text has 10-35% of its tokens
  more than 1.0 below.
- temperature T > 0: under softmax(logits / T) restricted to the top_p nucleus,
  widened by ``nucleus_slack`` (0.05) for noise at its edge and renormalized
  (q), it lies outside the nucleus or has q below ``floor`` (1e-6).

Re-tokenization: the node's ids are not sent and the text, re-tokenized, can be
segmented otherwise ("hel"+"lo" made, "hello" read; a partial UTF-8 byte made,
U+FFFD's three bytes read; a stop string cut inside a token). So an implausible
token passes when a plausible one at its position reads the same text from there
(or, at the end, starts with the rest); that token is taken as the one made and
the rest re-read after it in one more pass (at most ``_PASSES``), so the tokens
after it are judged in the context the node had.

The output fails when more of its tokens than ``greedy_share`` (3%) at
temperature 0, ``max_share`` (10%) above it, and at least 2, are implausible:
an honest greedy output has none but for noise, an honest sample a rare draw.
Above temperature 0 it also fails when its log-likelihood is too low: summed
over positions, log q(token) (floored at ``floor``) + H(q) has mean 0 and
variance sum Var_q(log q) for an honest sample (a martingale: whatever came
before), so z below ``-z_limit`` (-5) is text the model did not sample. The
variance gets ``var_floor`` (0.5) per token, so one rare honest draw where the
model is near-certain cannot sink a short output. Teacher-forced, fluent text of
another prompt is plausible token by token but for its first few; at T 0.7 this
catches some of it (SmolLM2: ~10%), not all. An empty output passes (nothing
claimed, nothing paid); one longer than max_tokens plus re-tokenization slack,
or whose job does not fit the model's context, fails.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bus.events import JobSubmitted, Sampling
from verifier.verdict import Verdict
from workers.engine import Engine
from workers.generation import GenerationRequest

_CANDIDATES = 8  # alternatives tried at an implausible position (re-tokenization)
_CHUNK = 256  # positions scored at once: bounds the (positions x vocab) temporaries
_PASSES = 16  # re-reads after a re-segmentation: bounds a check at 17 passes


def job_request(job: JobSubmitted) -> GenerationRequest:
    """The GenerationRequest a worker builds for ``job``: same messages, prompt, sampling."""
    messages = tuple(m.model_dump() for m in job.messages) if job.messages else None
    return GenerationRequest(kind=job.kind, messages=messages, prompt=job.prompt,
                             sampling=job.sampling)


class PrefillJudge:
    """A Judge for a local Hugging Face model: prefills the prompt and the claimed
    output once and ranks every claimed token (rule in the module docstring).

    Tokenizes prompts through ``Engine.prompt_ids``, so the judge reads exactly the
    ids the serving worker fed the model.
    """

    def __init__(self, engine: Engine, *, margin: float = 1.0, floor: float = 1e-6,
                 nucleus_slack: float = 0.05, greedy_share: float = 0.03,
                 max_share: float = 0.10, z_limit: float = 5.0, var_floor: float = 0.5) -> None:
        self.engine = engine
        self.margin, self.log_floor = margin, math.log(floor)
        self.nucleus_slack = nucleus_slack
        self.greedy_share, self.max_share = greedy_share, max_share
        self.z_limit, self.var_floor = z_limit, var_floor

    @classmethod
    def load(cls, path: Path, **kw) -> "PrefillJudge":
        """A judge over the model in ``path`` (loaded as ``Engine.load`` does)."""
        return cls(Engine.load(path), **kw)

    @staticmethod
    def can_judge(job: JobSubmitted) -> bool:
        """Whether this judge can replay what the node sampled from: the model's logits
        with the job's ``logit_bias`` and ``ignore_eos`` (the same at every position),
        not its penalties or grammar (they hang on the very ids made, which a re-read
        text may segment otherwise); such a job gets no verdict rather than a wrong one."""
        s = job.sampling
        return not (s.presence_penalty or s.frequency_penalty or s.grammar is not None)

    @torch.inference_mode()
    def _replayed(self, logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """``logits`` (a pass's own copy) as the job's sampler saw them (``can_judge``)."""
        if sampling.logit_bias:
            bias = {t: b for t, b in sampling.logit_bias.items() if t < logits.shape[-1]}
            ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
            logits[:, ids] += torch.tensor(list(bias.values()), dtype=logits.dtype,
                                           device=logits.device)
        if sampling.ignore_eos and (eos := [t for t in self.engine.eos_token_ids
                                            if t < logits.shape[-1]]):
            logits[:, eos] = -math.inf
        return logits

    def check(self, job: JobSubmitted, text: str, finish_reason: str) -> Verdict:
        """Judge ``text`` as the model's output for ``job``. ``finish_reason`` needs no
        branch: an EOS or stop string is never part of the text, and a stop string cut
        inside a token is covered by the prefix rule at the last position."""
        ids, starts = self._tokenize(text) if text else ([], [])
        if not ids:
            return Verdict(True, "empty output: nothing claimed")
        engine, sampling = self.engine, job.sampling
        prompt = engine.prompt_ids(job_request(job))
        # Each U+FFFD was at least one token made and is three bytes re-read.
        slack = 2 + sampling.max_tokens // 16 + 2 * text.count("\ufffd")
        if len(ids) > sampling.max_tokens + slack:
            return self._verdict(False, f"{len(ids)} tokens claimed, max_tokens is "
                                 f"{sampling.max_tokens}", len(ids), 0, [])
        if len(prompt) + sampling.max_tokens > engine.context_length:
            return self._verdict(False, f"the prompt ({len(prompt)} tokens) plus max_tokens "
                                 f"does not fit the context of {engine.context_length}",
                                 len(ids), 0, [])
        # The job fit, so only the re-tokenization slack can overflow: judge what fits.
        room = engine.context_length - len(prompt)
        ids, starts = ids[:room], starts[:room]
        bad, worst, surprise, variance = 0, [], 0.0, 0.0
        pos, passes, cache = 0, 0, None
        while pos < len(ids):
            logits, cache = self._logits(prompt + ids, len(prompt), pos, cache)
            logits = self._replayed(logits, sampling)
            for i, row in enumerate(self._score(logits, ids[pos:], sampling), start=pos):
                ok, rank, logprob, gained, entropy, var, alts = row
                surprise, variance = surprise + entropy, variance + var
                found = None if ok else self._resegmented(text, starts[i], alts)
                if ok or found is None:
                    surprise += gained
                    if not ok:
                        bad += 1
                        worst.append((logprob, i, rank))
                    continue
                # Another segmentation reads the same text: take it as the token made
                # and re-read the rest after it, so what follows is judged in the
                # node's context; past _PASSES re-reads it only excuses the token.
                token, logq, piece = found
                surprise += logq
                if passes < _PASSES and starts[i] is not None:
                    passes += 1
                    end = starts[i] + len(piece)
                    tail, tail_starts = self._tokenize(text[end:]) if end < len(text) else ([], [])
                    tail, tail_starts = tail[:room - i - 1], tail_starts[:room - i - 1]
                    ids = ids[:i] + [token] + tail
                    starts = starts[:i] + [starts[i]] + [end + k for k in tail_starts]
                    pos = i + 1
                    break
            else:
                pos = len(ids)
        worst = [[i, rank, round(max(lp, -1e9), 2)] for lp, i, rank in sorted(worst)[:5]]
        n = len(ids)
        share = self.greedy_share if sampling.temperature == 0 else self.max_share
        if bad >= 2 and bad > share * n:
            return self._verdict(False, f"{bad} of {n} tokens are not what the model samples",
                                 n, bad, worst)
        z = None
        if sampling.temperature > 0:
            z = surprise / math.sqrt(variance + self.var_floor * n)
            if z < -self.z_limit:
                return self._verdict(False, f"log-likelihood {z:.1f} sd below an honest "
                                     "sample's", n, bad, worst, z)
        return self._verdict(True, f"{n - bad} of {n} tokens plausible", n, bad, worst, z)

    def _tokenize(self, text: str) -> tuple[list[int], list[int | None]]:
        """The text's ids as a worker's continuation reads them, and where each starts."""
        backend = getattr(self.engine.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow tokenizer: no offsets, so no re-segmentation
            ids = self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
            return ids, [None] * len(ids)
        enc = backend.encode(text, add_special_tokens=False)
        # A token's start is where the previous one ended, unless its own is earlier
        # (bytes of one character share its offsets): some tokenizers trim a token's
        # leading space out of its offsets, and the space is part of its text.
        starts, end = [], 0
        for start, stop in enc.offsets:
            starts.append(min(start, end))
            end = stop
        return list(enc.ids), starts

    @torch.inference_mode()
    def _logits(self, full: list[int], n_prompt: int, pos: int, cache):
        """The logits that predicted each claimed token from ``pos`` on (``full``: the
        prompt's ids, then the claimed ones), and the cache of the pass. A later pass
        cuts the cache back to what precedes position ``pos`` and runs only the rest."""
        keep = n_prompt - 1 + pos  # the tokens before the one that predicts position pos
        if cache is not None and hasattr(cache, "crop"):
            if (extra := cache.get_seq_length() - keep) > 0:
                cache.crop(-extra)  # a negative count: tokens removed (transformers 5)
        else:
            cache, keep = None, 0
        x = torch.tensor([full[keep:-1]], dtype=torch.long, device=self.engine.device)
        out = self.engine.model(input_ids=x, past_key_values=cache, use_cache=True,
                                logits_to_keep=len(full) - n_prompt - pos)
        return out.logits[0].float(), out.past_key_values

    def _score(self, logits: torch.Tensor, ids: list[int], sampling: Sampling) -> list[tuple]:
        """``_rows`` a chunk of positions at a time."""
        return [row for lo in range(0, len(ids), _CHUNK)
                for row in self._rows(logits[lo:lo + _CHUNK], ids[lo:lo + _CHUNK], sampling)]

    @torch.inference_mode()
    def _rows(self, logits: torch.Tensor, ids: list[int], sampling: Sampling) -> list[tuple]:
        """Per position: plausible?, 1-based rank, log-probability (before the nucleus),
        floored log q, entropy and variance of log q (0s when greedy), and the
        plausible alternatives as (token, floored log q) where the token failed."""
        y = torch.tensor(ids, device=logits.device)[:, None]
        n = len(ids)
        if sampling.temperature == 0:
            logp = logq = torch.log_softmax(logits, dim=-1)
            allowed = logits >= logits.max(dim=-1, keepdim=True).values - self.margin
            entropy = variance = torch.zeros(n)
        else:
            logp = logq = torch.log_softmax(logits / sampling.temperature, dim=-1)
            top_p = sampling.top_p + self.nucleus_slack
            if top_p < 1.0:
                # The sampler keeps a token while the mass before it is below top_p;
                # the smallest kept log-probability is each row's cut.
                ordered = logp.sort(dim=-1, descending=True).values
                probs = ordered.exp()
                kept = (probs.cumsum(dim=-1) - probs) < top_p
                cut = ordered.masked_fill(~kept, math.inf).min(dim=-1, keepdim=True).values
                logq = logp.masked_fill(logp < cut, -math.inf)
                logq = logq - torch.logsumexp(logq, dim=-1, keepdim=True)
            allowed = logq >= self.log_floor
            q = logq.exp()
            # Outside the nucleus q is 0 and log q -inf: their product counts as 0.
            finite = torch.where(q > 0, logq, torch.zeros_like(logq))
            entropy = -(q * finite).sum(dim=-1)
            variance = ((q * finite * finite).sum(dim=-1) - entropy ** 2).clamp(min=0)
        gained = logq.gather(1, y)[:, 0].clamp(min=self.log_floor)
        ok = allowed.gather(1, y)[:, 0]
        observed = logp.gather(1, y)[:, 0]
        rank = (logp > observed[:, None]).sum(dim=-1) + 1
        top = logq.topk(min(_CANDIDATES, logq.shape[-1]), dim=-1)
        rows = []
        for r, (good, *row) in enumerate(zip(ok.tolist(), rank.tolist(), observed.tolist(),
                                              gained.tolist(), entropy.tolist(),
                                              variance.tolist())):
            alts = [] if good else [
                (c, max(v, self.log_floor)) for c, v, a in zip(
                    top.indices[r].tolist(), top.values[r].tolist(),
                    allowed[r, top.indices[r]].tolist()) if a]
            rows.append((good, *row, alts))
        return rows

    def _resegmented(self, text: str, start: int | None,
                     alternatives: list[tuple[int, float]]) -> tuple[int, float, str] | None:
        """The most probable plausible alternative that reads the same text from
        ``start``: (token, its floored log q, its text); None when there is none."""
        if start is None:
            return None
        rest = text[start:]
        for token, logq in alternatives:  # most probable first
            piece = self.engine.tokenizer.decode([token], skip_special_tokens=True,
                                                 clean_up_tokenization_spaces=False)
            if piece and (rest.startswith(piece) or piece.startswith(rest)):
                return token, logq, piece[:len(rest)]
        return None

    @staticmethod
    def _verdict(passed: bool, reason: str, n: int, bad: int, worst: list,
                 z: float | None = None) -> Verdict:
        evidence = {"tokens": n, "implausible": bad, "worst": worst}
        if z is not None:
            evidence["z"] = round(z, 2)
        return Verdict(passed, reason, json.dumps(evidence, separators=(",", ":")))
