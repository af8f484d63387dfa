"""Per-token log probabilities in OpenAI's two shapes.

Chat completions: ``{"content": [{"token", "logprob", "bytes", "top_logprobs":
[...]}, ...], "refusal": null}`` (:class:`~bus.sampling.TokenLogprob` is that
item already). Legacy completions: parallel lists ``tokens``,
``token_logprobs``, ``top_logprobs`` (one ``{token: logprob}`` map per token)
and ``text_offset`` (each token's character offset in the completion).
"""
from __future__ import annotations

from collections.abc import Sequence

from bus.sampling import TokenLogprob


def chat_logprobs(entries: Sequence[TokenLogprob] | None) -> dict | None:
    """``choices[i].logprobs`` of a chat completion (or of a chunk: its tokens)."""
    if entries is None:
        return None
    return {"content": [e.model_dump(mode="json") for e in entries], "refusal": None}


def legacy_logprobs(entries: Sequence[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """``choices[i].logprobs`` of a legacy completion; ``offset``: where the first
    token starts in the completion (a stream chunk's tokens do not start at 0)."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            "text_offset": offsets}


def logprobs_body(kind: str, entries: Sequence[TokenLogprob] | None, offset: int = 0
                  ) -> dict | None:
    """The shape ``kind`` (``chat`` or ``completion``) answers with."""
    return chat_logprobs(entries) if kind == "chat" else legacy_logprobs(entries, offset)


def tokens_after(entries: Sequence[TokenLogprob], overlap: int) -> list[TokenLogprob]:
    """The tokens of a delta whose first ``overlap`` characters were already sent:
    those that end past them (a token straddling the line is kept, once)."""
    out, seen = [], 0
    for e in entries:
        seen += len(e.token)
        if seen > overlap:
            out.append(e)
    return out
