"""Referrals on the ledger: codes, sign-up links, and who referred whom.

Every account's code is derived from its name (:func:`code_for`): no
allocation, the same on every process. The ledger registers it (a
``ReferralCode`` receipt keyed by the code) the first time it is shown
(``GET /v1/referrals``, ``inferbus accounts create``), and only a registered
code is accepted at sign-up: a code resolves to its account by one load, and
a code nobody was ever shown cannot be used.

A sign-up (``inferbus accounts create ACCOUNT --referral CODE``) opens the new
account and links it to the code's account in one save, as the account's
``ReferralLinked`` event: at most once (the account must be new: a second
sign-up conflicts on its ``Opened`` event), never to itself, never closing a
cycle (A refers B refers A). The reward itself is paid by
:class:`ledger.commands.Settle` in the same save as the referred job's debit,
and taken back by :class:`ledger.commands.Revoke` with the debit.
"""
from __future__ import annotations

import base64
import hashlib
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import RecordConflictError

from bus.subjects import check_token
from ledger.domain import LEDGER_NAMESPACE, Account
from ledger.outcomes import AccountView, account_view
from ledger.persistence import guarded

CODE_LENGTH = 10  # base32: 50 bits, so two accounts' codes practically never collide
MAX_CHAIN = 10_000  # referrers followed when looking for a cycle


class ReferralError(ValueError):
    """A sign-up the rules refuse: unknown code, self-referral, cycle, existing account."""


def code_for(account: str) -> str:
    """``account``'s referral code: derived, so every process computes the same one."""
    digest = hashlib.sha256(f"inferbus:referral:{account}".encode()).digest()
    return base64.b32encode(digest).decode().lower()[:CODE_LENGTH]


def referral_code_id(code: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"referral-code:{code}")


class ReferralCode(Aggregate):
    """A code that was shown to its account, hence may be signed up with."""

    @staticmethod
    def create_id(code: str) -> UUID:
        return referral_code_id(code)

    @event("Registered")
    def __init__(self, code: str, account: str) -> None:
        self.code, self.account = code, account


class Referrals:
    """The referral commands of :class:`ledger.application.Ledger` (a mixin: it
    uses the ledger's ``load``, ``load_account``, ``serialized``, ``save`` and
    ``retry``)."""

    @guarded
    def referral_code(self, account: str) -> str:
        """``account``'s code, registered on first use so that sign-ups accept it."""
        code = code_for(account)
        if (receipt := self._unregistered_code(account)) is not None:
            try:
                self.save(receipt)
            except RecordConflictError:  # registered meanwhile by another process
                pass
        return code

    @guarded
    def referrer_of(self, account: str) -> str | None:
        """The account whose code ``account`` signed up with, if any."""
        with self.serialized(account):
            acct = self.load_account(account)
        return acct.referrer if acct is not None else None

    @guarded
    def sign_up(self, account: str, code: str | None = None) -> AccountView:
        """Open ``account`` (it must be new), linked to the owner of ``code`` when
        given. Raises :class:`ReferralError` for a refused sign-up, changing nothing."""
        check_token(account, "account")
        referrer = self.directory.code_owner(code) if code else None
        if referrer == account:
            raise ReferralError(f"account {account!r} cannot use its own referral code")
        if referrer is not None and account in self._referral_chain(referrer):
            raise ReferralError(f"account {account!r} referred {referrer!r} already (directly "
                                "or through others): a referral cycle is refused")

        def attempt(_: int) -> AccountView:
            with self.serialized(account):
                if self.load_account(account) is not None:
                    raise ReferralError(f"account {account!r} exists already: only a new "
                                        "account signs up with a referral code")
                acct = Account(name=account)
                if referrer is not None:
                    acct.link_referrer(account=account, referrer=referrer, code=code)
                self.save(acct, self._unregistered_code(account))
                return account_view(account, acct)
        return self.retry(attempt)

    def _unregistered_code(self, account: str) -> ReferralCode | None:
        """A new receipt for ``account``'s code; None when it is registered already."""
        code = code_for(account)
        held = self.load(referral_code_id(code))
        if held is None:
            return ReferralCode(code, account)
        if held.account != account:  # 50 bits: practically never; refuse rather than mix up
            raise RuntimeError(f"referral code {code} of {account!r} is {held.account!r}'s")
        return None

    def code_owner(self, code: str) -> str:
        """The account whose registered code ``code`` is (ReferralError if none)."""
        held = self.load(referral_code_id(code.strip().lower())) if code.strip() else None
        if held is None:
            raise ReferralError(f"unknown referral code {code!r}")
        return held.account

    def _referral_chain(self, account: str) -> set[str]:
        """``account`` and every referrer above it (links never change once made)."""
        chain: set[str] = set()
        at: str | None = account
        while at is not None and at not in chain and len(chain) < MAX_CHAIN:
            chain.add(at)
            at = self.directory.referrer_of(at)  # another shard's account, too
        return chain
