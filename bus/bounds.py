"""Bounds on every field a message can carry, so no value a sender chooses can
overflow a column, a counter or a consumer (a read model's INTEGER, a BIGINT of
micro-credits): anything outside them fails validation, and the consumer
dead-letters it and goes on."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_TOKENS = 1 << 20  # tokens in one context: above any model served
MAX_ATTEMPTS = 1000  # deliveries of one job: jobs give up after a few
MAX_TEXT = 1 << 20  # characters of one text (a NATS message is at most 1 MiB anyway)
MAX_MICRO = 10**15  # micro-credits in one event: a billion credits
Id = Annotated[str, Field(min_length=1, max_length=128)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Attempt = Annotated[int, Field(ge=0, le=MAX_ATTEMPTS)]
Micro = Annotated[int, Field(ge=0, le=MAX_MICRO)]
Hash = Annotated[str, Field(max_length=128)]
