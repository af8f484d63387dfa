"""The bodies of ``POST /v1/chat/completions`` and ``POST /v1/completions``.

Strict: every parameter OpenAI defines is either honoured (mapped into
:class:`~bus.sampling.Sampling`, which the worker honours field by field) or
refused with a 400 naming it (:data:`REFUSED`, code ``unsupported_parameter``),
and a parameter OpenAI does not define is a 400 naming it too
(``unknown_parameter``): a client never has a parameter silently ignored.
Bookkeeping fields SDKs send (``user``, ``metadata``, ``store``,
``service_tier``, ...) are accepted, as they change nothing in the output.
A refused parameter sent at its "off" value (``null``, ``echo: false``,
``modalities: ["text"]``) is accepted too. ``ignore_eos`` is vLLM's extension.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from api.messages import RequestMessage, render
from api.structured import MAX_GRAMMAR, ResponseFormat, grammar_problem
from api.tools import MAX_TOOLS, Tool, ToolChoice, chosen, system_text
from api.tools import grammar as tool_grammar
from bus.bounds import MAX_TEXT, MAX_TOKENS
from bus.events import ChatMessage
from bus.sampling import MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, Grammar, Sampling

DEFAULT_MAX_TOKENS = 256
MAX_CHOICES = 8
MAX_LEGACY_LOGPROBS = 5  # OpenAI's bound for the legacy completions API

# Parameters OpenAI defines that are not served here: each with the values that
# mean "off" (accepted) and what to say otherwise.
_OFF: dict[str, Callable[[Any], bool]] = {
    "audio": lambda v: v is None, "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None, "reasoning_effort": lambda v: v is None,
    "verbosity": lambda v: v is None, "functions": lambda v: v is None,
    "function_call": lambda v: v is None, "modalities": lambda v: v in (None, ["text"]),
    "best_of": lambda v: v in (None, 1), "echo": lambda v: v in (None, False),
    "suffix": lambda v: v is None}
REFUSED_CHAT = {
    "audio": "audio output is not served (text only)",
    "modalities": "only the text modality is served",
    "prediction": "predicted outputs are not served",
    "web_search_options": "web search is not served",
    "reasoning_effort": "the models served here do not reason in steps",
    "verbosity": "not served",
    "functions": "deprecated: send tools instead",
    "function_call": "deprecated: send tool_choice instead"}
REFUSED_LEGACY = {"best_of": "not served: send n instead",
                  "echo": "not served", "suffix": "insertion is not served"}


def request_error(param: str, message: str) -> PydanticCustomError:
    """A 400 naming ``param`` (the error handler reads ``param`` from the context)."""
    return PydanticCustomError("invalid_parameter", "{message}",
                               {"param": param, "message": message})


def _refuse(data: Any, refused: dict[str, str]) -> Any:
    if not isinstance(data, dict):
        return data
    for name, why in refused.items():
        if name in data:
            if not _OFF[name](data[name]):
                raise PydanticCustomError("unsupported_parameter", "{message}",
                                          {"param": name, "message": why})
            data = {k: v for k, v in data.items() if k != name}
    return data


StopText = Annotated[str, Field(max_length=256)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopText | list[StopText] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int | None = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Any] | None = None
    ignore_eos: bool | None = False  # vLLM's extension: generate until max_tokens
    # Bookkeeping SDKs send; nothing in the output depends on them.
    user: str | None = Field(default=None, max_length=512)
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = Field(default=None, max_length=64)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, v: dict | None) -> dict | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens")
        for key, bias in v.items():
            if not (key.isascii() and key.isdigit() and int(key) < 2**31):
                raise ValueError(f"{key!r} is not a token id: keys are token ids as strings")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                    or not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {key} must be a number from -100 to 100")
        return v

    @property
    def choices(self) -> int:
        """How many choices to generate (``n``): one job each, billed each."""
        return self.n or 1

    def limit(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        """How many top alternatives to return per token; None: no logprobs."""
        return None

    def output_grammar(self) -> Grammar | None:
        return None

    def sampling(self) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        bias = {int(k): float(b) for k, b in self.logit_bias.items()} if self.logit_bias else None
        return Sampling(
            max_tokens=self.limit() or DEFAULT_MAX_TOKENS,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, stop=stop, seed=self.seed,
            logprobs=self.logprobs_k(), presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0, logit_bias=bias,
            ignore_eos=bool(self.ignore_eos), grammar=self.output_grammar())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Generation):
    messages: list[RequestMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # at most one call per reply either way
    prompt_cache_key: str | None = Field(default=None, max_length=512)
    safety_identifier: str | None = Field(default=None, max_length=512)
    _grammar: Grammar | None = PrivateAttr(default=None)
    _turns: tuple[ChatMessage, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        return _refuse(data, REFUSED_CHAT)

    @model_validator(mode="after")
    def _decoding(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise request_error("top_logprobs", "needs logprobs: true")
        try:
            tools, mode = chosen(self.tools or [], self.tool_choice)
        except ValueError as exc:
            raise request_error("tool_choice", str(exc)) from None
        fmt = self.response_format
        if tools and fmt is not None and fmt.type != "text":
            raise request_error("response_format", "cannot be combined with tools the model "
                                "may call (send tool_choice: none)")
        try:
            self._grammar = tool_grammar(tools, mode) if tools else (fmt.grammar() if fmt else None)
        except ValueError as exc:
            raise request_error("response_format", str(exc)) from None
        if tools and len(self._grammar.text) > MAX_GRAMMAR:
            raise request_error("tools", "the tools' parameter schemas are too large")
        if tools and (problem := grammar_problem(self._grammar)):
            raise request_error("tools", f"a tool's parameters cannot be enforced: {problem}")
        try:
            self._turns = _turns(self.messages, system_text(tools, mode))
        except ValidationError:  # a turn over the longest text a job may carry
            raise request_error("messages", f"a turn is over {MAX_TEXT} characters (tool "
                                "definitions count toward the system turn)") from None
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def output_grammar(self) -> Grammar | None:
        return self._grammar

    def contract_messages(self) -> tuple[ChatMessage, ...]:
        """The turns the worker gets: the tools told in the system turn."""
        return self._turns


def _turns(messages: list[RequestMessage], system: str) -> tuple[ChatMessage, ...]:
    turns = list(render(messages))
    if system:
        if turns[0].role == "system":
            turns[0] = ChatMessage(role="system", content=f"{turns[0].content}\n\n{system}")
        else:
            turns.insert(0, ChatMessage(role="system", content=system))
    return tuple(turns)


class CompletionRequest(_Generation):
    prompt: str = Field(max_length=1 << 20)
    max_tokens: int | None = Field(default=16, gt=0, le=MAX_TOKENS)  # OpenAI's legacy default
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LEGACY_LOGPROBS)

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        return _refuse(data, REFUSED_LEGACY)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        # SDKs (LangChain's OpenAI, batch helpers) send a list: one text is one prompt.
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if isinstance(value, list):
            raise ValueError("one prompt per request: a string, or a list of one string")
        return value

    def logprobs_k(self) -> int | None:
        return self.logprobs
