"""How the echo engine follows a grammar: the smallest instance it can walk to.

The echo model has no logits, so it cannot sample within a grammar. Its echo
stands when the echo itself follows the grammar (``follows``: plain text where
a tool call is optional); otherwise it answers with a deterministic instance
(``smallest_instance``). One llguidance
matcher over a byte vocabulary (256 byte tokens and an end token) is walked
byte by byte, each time taking the first byte the grammar allows from a fixed
order that closes what is open first (end, ``"``, ``}``, ``]``, ``0``, ...).
``json_object`` gives ``{}``; a schema gives its required keys with the
shortest values (``{"a":false}``). A grammar whose shortest path is not
found this way stops at the walk's byte limit (finish_reason "length").

Torch-free (the echo engine runs without torch).
"""
from __future__ import annotations

from functools import lru_cache

from llguidance import LLMatcher, LLTokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from bus.sampling import Grammar
from workers.grammar import GrammarError, compiled

END = 256  # the byte vocabulary's end token
# Closers first, then the cheapest value starts, then any printable ASCII.
_ORDER = (END, *b'"}]0fn,:', *range(32, 127), *range(127, 256), *range(0, 32))


@lru_cache(maxsize=1)
def byte_tokens() -> LLTokenizer:
    """A vocabulary of the 256 bytes (byte-level BPE, no merges) and an end token."""
    tokenizer = Tokenizer(models.BPE(vocab={**_byte_vocab(), "<end>": END}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<end>"])
    return LLTokenizer(tokenizer.to_str(), eos_token=END)


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-character table: the characters a byte-level BPE spells bytes with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def follows(grammar: Grammar, text: str) -> bool:
    """Whether ``text`` is a complete instance of ``grammar`` (GrammarError when it
    cannot be compiled)."""
    matcher = LLMatcher(byte_tokens(), compiled(grammar), log_level=0)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


def smallest_instance(grammar: Grammar, limit: int) -> tuple[str, bool]:
    """The walked instance of ``grammar`` (at most ``limit`` bytes) and whether it is
    complete; raises GrammarError for a grammar that cannot be compiled."""
    if grammar.kind == "json_object":
        return "{}", True  # the walk's own answer, '{"":""}', is valid but odd
    matcher = LLMatcher(byte_tokens(), compiled(grammar), log_level=0)
    out = bytearray()
    while len(out) < limit and not matcher.is_stopped():
        if matcher.is_error():
            raise GrammarError(f"the grammar cannot be followed: {matcher.get_error()}")
        mask = matcher.compute_bitmask()
        token = next((t for t in _ORDER if mask[t // 8] >> (t % 8) & 1), None)
        if token is None or token == END:
            break
        if not matcher.consume_token(token):
            raise GrammarError(f"the grammar cannot be followed: {matcher.get_error()}")
        out.append(token)
    complete = matcher.is_stopped() or matcher.is_accepting()
    return out.decode("utf-8", errors="replace"), complete
