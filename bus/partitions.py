"""Billing partitions: which ledger shard holds an account, and a job's money.

An account's credits live in exactly one ledger shard, so that a hold and the
balance it checks are one save. The shard is a function of the account's name
only: of its *slot*, one of ``SLOTS``, taken from a hash of the name. A
deployment runs ``n`` shards (``INFERBUS_LEDGER_PARTITIONS``, 1 to ``SLOTS``);
shard ``k`` holds the slots ``s`` with ``s % n == k``.

A job's reservation lives in its account's shard, but most of the processes
that log a job's outcome (the gate, the verifier, the API's cancel) never
learn the account, and must not need ``n``. So the API stamps the account's
slot into the job id it mints (the id's last hex digit), and every outcome is
logged on a subject that carries the job's slot (``bus.subjects``); each
shard's settlement consumer asks the server for its own slots only.
"""
from __future__ import annotations

import hashlib

SLOTS = 16  # the most shards a deployment can run; a slot is one hex digit
_HEX = "0123456789abcdef"


def check_partitions(n: int) -> int:
    """``n`` if it is a valid shard count, else ValueError."""
    if not 1 <= n <= SLOTS:
        raise ValueError(f"the ledger runs 1 to {SLOTS} partitions, not {n}")
    return n


def account_slot(account: str) -> int:
    """``account``'s slot: the same in every process, whatever the shard count."""
    return hashlib.blake2b(account.encode(), digest_size=1).digest()[0] % SLOTS


def job_slot(job_id: str) -> int:
    """The slot stamped into ``job_id`` (:func:`stamp`). An id minted before
    stamping (or not hex) still has one, so its outcome reaches some shard: a
    shard that never held it settles nothing for it and the sweep refunds it."""
    last = job_id[-1:].lower()
    return _HEX.index(last) if last and last in _HEX else account_slot(job_id)


def stamp(job_id: str, account: str) -> str:
    """``job_id`` with ``account``'s slot as its last hex digit: the job's money
    then routes to its account's shard from the id alone. Deterministic, so an
    idempotent id stays the same id."""
    return job_id[:-1] + _HEX[account_slot(account)]


def shard_of_account(account: str, n: int) -> int:
    return account_slot(account) % n


def shard_of_job(job_id: str, n: int) -> int:
    return job_slot(job_id) % n


def slots_of(shard: int, n: int) -> list[int]:
    """The slots shard ``shard`` of ``n`` holds."""
    if not 0 <= shard < n:
        raise ValueError(f"shard {shard} is not one of 0..{n - 1}")
    return [s for s in range(SLOTS) if s % n == shard]
