"""The inference engine: one local Hugging Face model, streamed token by token.

``Engine.generate`` runs its own decode loop (a prefill of the prompt, then one
token per step on the KV cache) instead of ``model.generate``, so every token
reaches the caller as it is made and ``should_stop`` can end a job between two
tokens. What a request does with its tokens (sampling, text, stop strings,
counts) lives in ``workers.sequence.Sequence``; this module owns the model and
its forward passes. ``workers.batching`` drives the same ``Sequence``s through
shared, batched forward passes (``workers.decoders``). What a sequence with
logit rules or logprobs needs (``workers.logits``) is made on a small pool of
threads, never on the decode thread nor the caller's event loop.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bus.sampling import Sampling
from workers.generation import ContextLengthExceeded, GenerationRequest, InvalidRequest, Step
from workers.grammar import Constraint, GrammarError, GrammarTokens
from workers.logits import LogitRules, LogprobReport, TokenPieces, needs_rules
from workers.omp import release_openmp_pool
from workers.sequence import Sequence

# Grammars compile here (milliseconds each, up to a second for a huge one; llguidance
# drops the GIL meanwhile). Two threads: the machine's decode thread needs the rest.
_PREPARE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inferbus-prepare")


def _prepared(task: Callable[..., Any], *args: Any) -> Any:
    """``task`` on a _PREPARE thread, whose OpenMP pool is freed after it: a logit rule's
    ``torch.zeros`` of the vocabulary's width is a parallel region, and a pool left on
    this thread would slow every decode step of the batcher's (workers.omp)."""
    try:
        return task(*args)
    finally:
        release_openmp_pool()


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
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") \
            else None
        # The width of the logits: a tokenizer may have fewer ids than the model scores.
        self.vocab_width = int(getattr(output, "out_features", 0) or config.vocab_size)
        self._vocabulary: tuple[GrammarTokens, TokenPieces] | None = None
        self._vocabulary_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, name: str | None = None, dtype: str | None = None) -> "Engine":
        """Load the model in ``path`` (never the hub); ``name`` defaults to the dir name.
        ``dtype`` ("float32", "bfloat16", "float16") defaults to bf16 (fp16 where bf16 is
        missing) on CUDA and float32 on CPUs."""
        path = Path(path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is not None:
            dtype = getattr(torch, dtype)
        elif device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32  # half precision matmuls are slow or missing on many CPUs
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        engine = cls(model.to(device).eval(), tokenizer, name or path.name, device)
        # In the background, so the first grammar or logprobs request does not wait for it.
        _PREPARE.submit(_prepared, engine.vocabulary)
        return engine

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes the KV cache holds per token of one sequence (keys and values, all layers)."""
        c = self.model.config
        heads = getattr(c, "num_attention_heads", 1)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        size = next(self.model.parameters()).element_size()
        return 2 * c.num_hidden_layers * kv_heads * head_dim * size

    def sequence(self, request: GenerationRequest,
                 should_stop: Callable[[], bool] | None = None) -> Sequence:
        """The decode state of ``request``, tokenized and checked: raises
        ContextLengthExceeded when the prompt plus ``max_tokens`` does not fit.

        A ``continuation`` is tokenized after the prompt: the prefill runs both, and
        the output goes on from it (see ``generate``).
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
        sampling = request.sampling
        prepared = None
        if needs_rules(sampling) or sampling.logprobs is not None:
            if bad := [t for t in sampling.logit_bias or () if t >= self.vocab_width]:
                raise InvalidRequest(f"logit_bias names token {bad[0]}, but this model's "
                                     f"vocabulary has {self.vocab_width} tokens")
            prepared = _PREPARE.submit(_prepared, self._prepare, sampling, list(done))
        return Sequence(prompt_ids, list(done), sampling, self.tokenizer,
                        self.eos_token_ids, self.device, should_stop or (lambda: False),
                        prepared)

    def _prepare(self, sampling: Sampling,
                 done: list[int]) -> tuple[LogitRules | None, LogprobReport | None]:
        """A sequence's logit rules and logprob report (on the pool's thread)."""
        tokens, pieces = self.vocabulary()
        rules = None
        if needs_rules(sampling):
            constraint = None if sampling.grammar is None else Constraint(tokens, sampling.grammar)
            rules = LogitRules(sampling, self.vocab_width, self.device, self.eos_token_ids, done,
                               constraint)
        report = None if sampling.logprobs is None else LogprobReport(sampling.logprobs, pieces)
        return rules, report

    def vocabulary(self) -> tuple[GrammarTokens, TokenPieces]:
        """The model's vocabulary for grammars and logprobs, built on first use (~0.3 s)."""
        with self._vocabulary_lock:
            if self._vocabulary is None:
                try:
                    tokens = GrammarTokens(self.tokenizer, self.vocab_width, self.eos_token_ids)
                except ValueError as exc:  # a slow (Python) tokenizer
                    raise GrammarError(f"{self.name}'s tokenizer cannot follow a grammar or "
                                       f"report logprobs: {exc}") from None
                self._vocabulary = tokens, TokenPieces(tokens)
            return self._vocabulary

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
        return self._decode_loop(self.sequence(request, should_stop))

    def _decode_loop(self, seq: Sequence) -> Iterator[Step]:
        try:
            if (step := seq.start()) is not None:
                yield step
                return
            logits, cache = self.forward(seq.input_ids, None)
            while True:
                yield (step := seq.advance(seq.pick(logits)))
                if step.finish_reason is not None:
                    return
                # Polled after the caller had the step, so it can react to that step.
                if (step := seq.check_stop()) is not None:
                    yield step
                    return
                logits, cache = self.forward([seq.last_token], cache)
        finally:
            # Free the OpenMP pool of the thread that ran the loop, so no pool outlives
            # a generation on one of a thread pool's threads to slow the next one on
            # another thread, or a batcher's decode steps (workers.omp).
            release_openmp_pool()

    @torch.inference_mode()
    def forward(self, ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        """Run ``ids`` through the model on top of ``cache``: next-token logits and the cache.

        inference_mode wraps each pass, not the generator, so no grad-mode state
        leaks into the caller's code between two steps.
        """
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        # logits_to_keep=1: a prefill needs the logits of the last position only.
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[0, -1].float(), out.past_key_values

    def _tokenize(self, text: str, special: bool) -> list[int]:
        # A fast tokenizer's Rust encoder gives what its Python wrapper gives, at a
        # fraction of the cost: 256 concurrent requests spent ~75 ms in the wrapper.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=special).ids
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _encode(self, request: GenerationRequest) -> list[int]:
        return self.prompt_ids(request)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids exactly as generation feeds them (a chat through its
        template, a completion with the tokenizer's special tokens); never empty."""
        tok = self.tokenizer
        if request.kind == "chat":
            messages = [m.model_dump() if hasattr(m, "model_dump") else dict(m)
                        for m in request.messages or ()]
            # The template writes any BOS itself, so no special tokens are added.
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self._tokenize(text, special=False)
        else:
            ids = self._tokenize(request.prompt or "", special=True)  # BOS if it adds one
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
