"""The grammar a constrained sequence must follow, as an llguidance matcher.

The worker builds one :class:`Constraint` per constrained sequence (off its
decode thread: a large grammar takes milliseconds to compile) over the
engine's :class:`GrammarTokens`, built once per engine and sized to the
model's logits width; ``workers.logits`` applies the masks a constraint fills.
The grammar text is compiled by ``bus.grammar_check``, the same code the API
checks requests with.
"""
from __future__ import annotations

from typing import Any

from llguidance import LLMatcher, LLTokenizer

from bus.grammar_check import LIMITS, BadGrammar, compile_grammar, one_line
from bus.sampling import Grammar
from workers.generation import InvalidRequest


class GrammarError(InvalidRequest):
    """A grammar that cannot be compiled, or a generation that cannot go on within it."""


def compiled(grammar: Grammar) -> str:
    """``bus.grammar_check.compile_grammar``, raising GrammarError."""
    try:
        return compile_grammar(grammar)
    except BadGrammar as exc:
        raise GrammarError(str(exc)) from None


class GrammarTokens:
    """A model's vocabulary as llguidance sees it: built once per engine (~0.3 s for
    a 50k vocabulary), shared by every constraint, sized to the logits width so a
    mask covers every logit (ids past the tokenizer's are never allowed)."""

    def __init__(self, hf_tokenizer: Any, n_vocab: int, eos_token_ids: frozenset[int]) -> None:
        from llguidance.hf import from_tokenizer  # imports transformers: the worker's side only

        eos = sorted(eos_token_ids) or hf_tokenizer.eos_token_id
        self.tokenizer: LLTokenizer = from_tokenizer(hf_tokenizer, n_vocab=n_vocab, eos_token=eos)
        self.n_vocab = n_vocab

    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes a token stands for (a byte-level piece may be part of a character)."""
        return self.tokenizer.decode_bytes([token])


class Constraint:
    """One sequence's matcher: fills its next-token mask, consumes each token drawn.

    Not thread-safe: after it is built, only the sequence's decode thread uses it.
    """

    def __init__(self, tokens: GrammarTokens, grammar: Grammar) -> None:
        self.matcher = LLMatcher(tokens.tokenizer, compiled(grammar), log_level=0,
                                 limits=LIMITS)
        self.raise_if_error()

    def fill(self, pointer: int, size: int) -> None:
        """Write the next-token bitmask (int32 words, bit set = allowed) at ``pointer``."""
        self.matcher.unsafe_compute_mask_ptr(pointer, size)
        self.raise_if_error()

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            self.raise_if_error()
            raise GrammarError(f"token {token} does not follow the grammar")

    @property
    def accepting(self) -> bool:
        """The output so far is a complete instance (EOS may end it)."""
        return self.matcher.is_accepting()

    @property
    def stopped(self) -> bool:
        """Nothing may follow: the sequence ends here."""
        return self.matcher.is_stopped()

    def raise_if_error(self) -> None:
        if self.matcher.is_error():
            raise GrammarError(f"the output cannot follow the grammar: "
                               f"{one_line(self.matcher.get_error())}")

