"""Tests run by hand rather than by ``./scripts/test`` (and so by CI): the
longest soaks and the production cluster shapes, which take minutes each on
two cores. Each is marked ``slow`` and skipped, saying how to run it, unless
its variable is set to 1. ``-m slow`` selects them (with the real-model tests).
"""
from __future__ import annotations

import os

import pytest


def by_hand(variable: str, what: str) -> list[pytest.MarkDecorator]:
    """Marks for a test that runs only with ``variable=1``: ``what`` names it."""
    return [pytest.mark.slow, pytest.mark.skipif(
        os.environ.get(variable) != "1",
        reason=f"{what} runs by hand: {variable}=1 .venv/bin/python -m pytest -m slow")]


# The soaks: minutes of load with faults injected, and the longest kill-and-restart runs.
SOAK = by_hand("INFERBUS_RUN_SOAKS", "a long soak")
# Three regions of three servers each.
THREE_BY_THREE = by_hand("INFERBUS_RUN_3X3", "the 3x3 shape")
