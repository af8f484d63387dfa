"""Credits as every contract carries them, and the one rule for what is left.

Amounts are integer micro-credits (``MICRO`` to a credit) everywhere: in
events, in the ledger, in the read models. People see decimal credits
(:func:`credits`). What an account can still reserve is :func:`available`:
the ledger's accounts, the balance read model and the audit's replay all
answer it with this one formula.
"""
from __future__ import annotations

from decimal import Decimal

MICRO = 1_000_000


def credits(micro: int) -> Decimal:
    """``1_500_000`` -> ``Decimal("1.5")``: micro-credits as exact decimal credits
    (``float()`` it for a JSON number, ``f"{credits(n):f}"`` for text)."""
    return (Decimal(micro) / MICRO).normalize()


def available(deposited: int, held: int, spent: int) -> int:
    """What an account can still reserve: its deposits less what is held for
    running jobs and what was spent."""
    return deposited - held - spent
