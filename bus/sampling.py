"""How a job is generated, and the per-token log probabilities a node returns.

:class:`Sampling` is part of every chat and completion job: each field is
honoured by the worker (``workers.sequence``), none is advisory. Fields added
after the first release default to "off" and are left out of a job's input
hash while off, so the hashes of older jobs on the log stay what their nodes
signed (:meth:`Sampling.off`).

:class:`Grammar` constrains the output: ``json_object`` (any JSON object),
``json_schema`` (``text`` is a JSON Schema), or ``lark`` (``text`` is an
llguidance Lark grammar; the API writes these for tool calls). The worker
masks every token the grammar does not allow, so the output always parses.

:class:`TokenLogprob` is OpenAI's ``logprobs.content[i]`` shape, so the API
passes it through unchanged.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bus.bounds import MAX_TOKENS
from bus.contracts import Contract

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_LOGIT_BIAS = 300  # entries; OpenAI's bound
MAX_GRAMMAR = 64 * 1024  # characters of one schema or grammar
# Token entries (a token and each of its alternatives) one result may carry: a
# node's result is one NATS message (1 MiB), and an entry takes up to ~50 bytes.
MAX_LOGPROB_ENTRIES = 14_000

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


# Opens every grammar the API writes for tool calls (clients cannot send a lark
# grammar): a job under such a grammar answers with a call, read as ``tool_calls``.
TOOL_CALL_MARKER = "// inferbus:tool-call"


class Grammar(Contract):
    kind: Literal["json_object", "json_schema", "lark"]
    text: str = Field(default="", max_length=MAX_GRAMMAR)

    @property
    def for_tools(self) -> bool:
        """Whether the API wrote it for tool calls (:data:`TOOL_CALL_MARKER`)."""
        return self.text.startswith(TOOL_CALL_MARKER)


class Sampling(Contract):
    """Per-request generation parameters; the worker honours each one.

    ``logprobs``: None for none, else how many top alternatives to return with
    each token (0..20). ``logit_bias`` maps token ids of the model's tokenizer to
    a bias added to their logits. ``ignore_eos``: generate until ``max_tokens``.
    """

    max_tokens: int = Field(ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[Annotated[str, Field(max_length=256)], ...] = Field(default=(), max_length=16)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    # Added later: off by default, and then not part of the input hash.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[TokenId, Bias] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    ignore_eos: bool = False
    grammar: Grammar | None = None

    def off(self) -> set[str]:
        """The later fields left at "off": an input hash leaves them out."""
        return {name for name in LATER_FIELDS
                if getattr(self, name) == Sampling.model_fields[name].default}


LATER_FIELDS = ("logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "ignore_eos",
                "grammar")


class TopLogprob(Contract):
    token: str = Field(max_length=256)
    logprob: float = Field(ge=-1e4, le=0.0)  # -inf is clamped: JSON cannot carry it
    bytes: tuple[Annotated[int, Field(ge=0, le=255)], ...] | None = Field(default=None,
                                                                         max_length=256)


class TokenLogprob(TopLogprob):
    """One output token: its log probability (log-softmax of the logits the node
    sampled from, after bias, penalties and grammar, before temperature) and the
    ``top_logprobs`` most likely tokens at that position."""

    top_logprobs: tuple[TopLogprob, ...] = Field(default=(), max_length=MAX_TOP_LOGPROBS)


Logprobs = Annotated[tuple[TokenLogprob, ...], Field(max_length=MAX_TOKENS)]
