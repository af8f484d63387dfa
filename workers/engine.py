"""The inference engine: one local Hugging Face model, streamed token by token.

``Engine.generate`` runs its own decode loop (a prefill of the prompt, then one
token per step on the KV cache) instead of ``model.generate``, so every token
reaches the caller as it is made and ``should_stop`` can end a job between two
tokens. The loop is split into a sampler, a text stream (incremental
detokenization and stop strings) and the forward passes, so it can grow into
continuous batching without the pieces changing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bus.events import Sampling

_REPLACEMENT = "\ufffd"  # what a decode of an unfinished UTF-8 sequence ends in


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: ``messages`` for a chat, ``prompt`` for a completion."""

    kind: Literal["chat", "completion"]
    messages: tuple[dict, ...] | None
    prompt: str | None
    sampling: Sampling
    continuation: str = ""  # output already delivered by an earlier attempt: go on from it

    def __post_init__(self) -> None:
        if self.kind == "chat" and not self.messages:
            raise ValueError("a chat request needs messages")
        if self.kind == "completion" and self.prompt is None:
            raise ValueError("a completion request needs a prompt")


@dataclass(frozen=True)
class Step:
    """One step of a generation.

    ``text`` is the output text new since the previous step (possibly ""); the
    texts of all steps concatenated are the whole output. ``finish_reason`` is
    None until the last step, then "stop" (EOS, a stop string or
    ``should_stop``) or "length" (``max_tokens`` reached).
    """

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None


class ContextLengthExceeded(ValueError):
    """The prompt plus ``max_tokens`` does not fit in the model's context."""


class Engine:
    """A causal LM and its tokenizer, loaded from a local Hugging Face directory."""

    def __init__(self, model: Any, tokenizer: Any, name: str, device: str) -> None:
        self.model, self.tokenizer, self.name, self.device = model, tokenizer, name, device
        config = model.config
        length = getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0)
        if not length:
            raise ValueError(f"{name}: the model config gives no context length")
        self.context_length: int = int(length)
        # Every id either config calls EOS ends a generation (chat models often
        # list both <|endoftext|> and their end-of-turn token).
        generation_config = getattr(model, "generation_config", None)
        self.eos_token_ids: frozenset[int] = frozenset(
            _ids(getattr(config, "eos_token_id", None))
            | _ids(getattr(generation_config, "eos_token_id", None)))

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> "Engine":
        """Load the model in ``path`` (never the hub); ``name`` defaults to the dir name."""
        path = Path(path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32  # half precision matmuls are slow or missing on CPUs
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        return cls(model.to(device).eval(), tokenizer, name or path.name, device)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._encode(request))

    def generate(self, request: GenerationRequest,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[Step]:
        """Stream the output of ``request`` as ``Step``s, the last with a finish_reason.

        Tokenizes and checks the context length eagerly, so ContextLengthExceeded
        is raised by this call itself, before any compute. ``should_stop`` is
        polled before every forward pass; when it returns True the generation
        ends with finish_reason "stop".

        With a ``continuation``, the steps carry only the text after it, while
        ``completion_tokens`` counts its tokens too: it is part of the output.
        """
        prompt_ids = self._encode(request)
        max_tokens = request.sampling.max_tokens
        if len(prompt_ids) + max_tokens > self.context_length:
            raise ContextLengthExceeded(
                f"this model's context length is {self.context_length} tokens, but "
                f"{len(prompt_ids) + max_tokens} were requested ({len(prompt_ids)} in the "
                f"prompt + {max_tokens} max_tokens)")
        done = self.tokenizer(request.continuation, add_special_tokens=False)["input_ids"] \
            if request.continuation else []
        return self._decode_loop(prompt_ids, list(done), request.sampling,
                                 should_stop or (lambda: False))

    def _decode_loop(self, prompt_ids: list[int], done: list[int], sampling: Sampling,
                     should_stop: Callable[[], bool]) -> Iterator[Step]:
        n_prompt = len(prompt_ids)
        sampler = _Sampler(sampling, self.device)
        # The last few delivered tokens give the detokenizer its context (a leading
        # space or a joined character decodes as it would have in one run).
        stream = _TextStream(self.tokenizer, sampling.stop, context=done[-4:])
        # completion_tokens counts the tokens that are part of the output: an EOS
        # token ends the generation but is neither emitted nor counted.
        # Re-tokenized, delivered text may count a token or two more than it took to
        # make; it never counts beyond max_tokens, the most the caller agreed to pay for.
        n_out = min(len(done), sampling.max_tokens)
        if should_stop() or n_out >= sampling.max_tokens:
            yield Step("", n_out, n_prompt, "stop" if n_out < sampling.max_tokens else "length")
            return
        logits, cache = self._forward(prompt_ids + done, None)
        while True:
            token = sampler(logits)
            if token in self.eos_token_ids:
                yield Step(stream.flush()[0], n_out, n_prompt, "stop")
                return
            n_out += 1
            text, stopped = stream.push(token)
            if stopped:
                yield Step(text, n_out, n_prompt, "stop")
                return
            if n_out >= sampling.max_tokens:
                rest, stopped = stream.flush()
                yield Step(text + rest, n_out, n_prompt, "stop" if stopped else "length")
                return
            yield Step(text, n_out, n_prompt, None)
            if should_stop():
                yield Step(stream.flush()[0], n_out, n_prompt, "stop")
                return
            logits, cache = self._forward([token], cache)

    @torch.inference_mode()
    def _forward(self, ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        """Run ``ids`` through the model on top of ``cache``: next-token logits and the cache.

        inference_mode wraps each pass, not the generator, so no grad-mode state
        leaks into the caller's code between two steps.
        """
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        # logits_to_keep=1: a prefill needs the logits of the last position only.
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[0, -1].float(), out.past_key_values

    def _encode(self, request: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if request.kind == "chat":
            messages = [m.model_dump() if hasattr(m, "model_dump") else dict(m)
                        for m in request.messages or ()]
            # The template writes any BOS itself, so no special tokens are added.
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(request.prompt or "")["input_ids"]  # BOS only if the tokenizer adds one
        if not ids:  # an empty prompt without BOS: the model needs one position to start
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            if start is None:
                raise ValueError("empty prompt and the tokenizer has no BOS or EOS token")
            ids = [start]
        return list(ids)


def _ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


class _Sampler:
    """Picks the next token from logits: greedy at temperature 0, else nucleus sampling."""

    def __init__(self, sampling: Sampling, device: str) -> None:
        self.temperature, self.top_p = sampling.temperature, sampling.top_p
        self.generator = torch.Generator(device=device)
        if sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(sampling.seed)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor) -> int:
        if self.temperature == 0:
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


class _TextStream:
    """Turns output tokens into output text, complete characters only, cut at a stop string.

    Decoding uses a sliding window of tokens (TGI's prefix/read offsets): the text
    of ``ids[prefix:]`` minus the text of ``ids[prefix:read]`` is what is new, so
    each step decodes a few tokens rather than the whole output. New text ending
    in U+FFFD is an unfinished character and waits for the next token.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], context: list[int] = ()) -> None:
        self.tokenizer = tokenizer
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
        return self.tokenizer.decode(ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
