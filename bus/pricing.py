"""Prices, worst-case reservations and RCP points. Shared by the API (which
reserves) and settlement (which charges), so both use one rule.

Credits are integer micro-credits (``bus.credits.MICRO``). Prices are set per
model in credits per 1,000 tokens, so one token costs ``price * 1000`` micro.

Embeddings are billed per input token, like a prompt: an embedding job's usage
has ``completion_tokens`` 0, and its reservation holds the inputs' bound plus
the one token of its ``Sampling(max_tokens=1)``. The default embeddings model
costs :data:`EMBEDDING_PRICE` (a tenth of a chat prompt token) unless
``INFERBUS_PRICING`` names it. RCP counts generated tokens, so an embedding
job earns its node none (docs/embeddings.md).
"""
from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from bus.credits import MICRO
from bus.events import ChatMessage, Usage

# A byte-level tokenizer makes at most one token per UTF-8 byte; these cover the
# chat template's own tokens (role markers, a default system prompt).
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS = 64


class ModelPrice(BaseModel):
    prompt_per_1k: Decimal = Field(default=Decimal("1"), ge=0)
    completion_per_1k: Decimal = Field(default=Decimal("2"), ge=0)

    def per_token(self) -> tuple[int, int]:
        return (int(self.prompt_per_1k * MICRO / 1000), int(self.completion_per_1k * MICRO / 1000))


EMBEDDING_MODEL = "all-minilm-l6-v2"  # the default embeddings model (docs/embeddings.md)
EMBEDDING_PRICE = ModelPrice(prompt_per_1k=Decimal("0.1"), completion_per_1k=Decimal("0"))


class Pricing(BaseModel):
    """Configured through ``INFERBUS_PRICING`` (JSON) in ``bus.config.Settings``."""

    models: dict[str, ModelPrice] = {EMBEDDING_MODEL: EMBEDDING_PRICE}
    default: ModelPrice = ModelPrice()
    rcp_per_token: int = 1
    tier_multiplier: dict[int, float] = {1: 1.0, 2: 1.25, 3: 1.5, 4: 2.0, 5: 2.5, 6: 3.0}
    # Referrals (docs/referrals.md): a referrer earns ``referral_share`` of what the
    # accounts it referred pay for completed jobs, as RCP at ``rcp_per_credit`` points
    # per credit (by default 10% x 500 = 50 points per credit they spend).
    referral_share: Decimal = Field(default=Decimal("0.1"), ge=0, le=1)
    rcp_per_credit: int = Field(default=500, ge=0)

    def price(self, model: str) -> ModelPrice:
        return self.models.get(model, self.default)

    def cost(self, model: str, usage: Usage) -> int:
        prompt, completion = self.price(model).per_token()
        return usage.prompt_tokens * prompt + usage.completion_tokens * completion

    def worst_case(self, model: str, prompt_tokens_bound: int, max_tokens: int) -> int:
        return self.cost(model, Usage(prompt_tokens=prompt_tokens_bound,
                                      completion_tokens=max_tokens))

    def points(self, completion_tokens: int, tier: int) -> int:
        return int(completion_tokens * self.rcp_per_token * self.tier_multiplier.get(tier, 1.0))

    def referral_rate(self) -> int:
        """RCP points per credit a referred account pays, for its referrer."""
        return int(self.referral_share * self.rcp_per_credit)


def prompt_tokens_bound(messages: tuple[ChatMessage, ...] | None, prompt: str | None,
                        inputs: tuple[str, ...] | None = None) -> int:
    """An upper bound on prompt tokens without the model's tokenizer: the API
    never loads a model, and reserving the worst case needs no exact count. An
    embedding input is at most one token per byte plus its two special tokens
    (a WordPiece token covers at least one character)."""
    if inputs is not None:
        return sum(len(text.encode()) + 2 for text in inputs)
    if messages is not None:
        return TEMPLATE_TOKENS + sum(len(m.content.encode()) + TEMPLATE_TOKENS_PER_MESSAGE
                                     for m in messages)
    return len((prompt or "").encode()) + 2
