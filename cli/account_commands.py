"""``inferbus accounts create|code``, ``inferbus plans create`` and ``inferbus
subscriptions start|cancel|show``: referrals and subscriptions, written to the
ledger directly (as ``inferbus credits deposit`` is); the money service's relay
(``inferbus projector``) puts their events on the log. See docs/referrals.md."""
from __future__ import annotations

import argparse
import math

from bus.account_events import MAX_PERIOD_S
from bus.config import Settings
from bus.credits import credits
from ledger import open_ledger

COMMANDS = ("accounts", "plans", "subscriptions")


def add_parsers(sub, accounts) -> None:
    """Add ``accounts create|code`` to ``accounts`` (the ``accounts`` subcommands)
    and the ``plans`` and ``subscriptions`` commands to ``sub``."""
    ac = accounts.add_parser("create", help="sign up a new account, optionally with a referral "
                             "code; prints its own code")
    ac.add_argument("account")
    ac.add_argument("--referral", metavar="CODE", help="the referral code it signed up with")
    accounts.add_parser("code", help="an account's referral code").add_argument("account")
    plans = sub.add_parser("plans", help="subscription plans").add_subparsers(
        dest="plans_cmd", required=True)
    pc = plans.add_parser("create", help="define a plan that grants credits every period")
    pc.add_argument("name")
    pc.add_argument("--credits", required=True, help="credits granted each period, e.g. 100")
    pc.add_argument("--period-days", required=True, type=float,
                    help="days per period; fractions allowed (0.5 = 12 hours, >= 1 second)")
    subs = sub.add_parser("subscriptions", help="accounts' subscriptions to plans"
                          ).add_subparsers(dest="subscriptions_cmd", required=True)
    ss = subs.add_parser("start", help="subscribe an account; grants the first period now")
    ss.add_argument("account")
    ss.add_argument("plan")
    subs.add_parser("cancel", help="stop renewing: lapses at the end of the paid period"
                    ).add_argument("account")
    subs.add_parser("show", help="an account's subscription").add_argument("account")


def handles(args: argparse.Namespace) -> bool:
    """Whether ``args`` is one of this module's commands (``accounts forget`` is not)."""
    return args.command in ("plans", "subscriptions") or (
        args.command == "accounts" and args.accounts_cmd in ("create", "code"))


def period_seconds(days: float) -> float:
    seconds = days * 86400
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_PERIOD_S:
        raise ValueError(f"--period-days must be between 1 second and 10 years, got {days}")
    return seconds


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from cli.admin import parse_credits
    ledger = open_ledger(settings)
    try:
        if args.command == "accounts" and args.accounts_cmd == "create":
            ledger.sign_up(args.account, args.referral)
            referrer = ledger.referrer_of(args.account)
            print(f"account {args.account} created"
                  + (f", referred by {referrer}" if referrer else ""))
            print(f"referral code: {ledger.referral_code(args.account)}")
        elif args.command == "accounts":
            print(ledger.referral_code(args.account))
        elif args.command == "plans":
            plan = ledger.define_plan(args.name, parse_credits(args.credits),
                                      period_seconds(args.period_days))
            print(f"plan {plan.name}: {float(credits(plan.credits)):g} credits every "
                  f"{plan.period_s / 86400:g} days")
        elif args.subscriptions_cmd == "start":
            view = ledger.start_subscription(args.account, args.plan)
            print(f"{view.account} subscribed to {view.plan}: "
                  f"{float(credits(view.credits)):g} credits granted, renews at "
                  f"{view.renews_at.isoformat()}")
        elif args.subscriptions_cmd == "cancel":
            view = ledger.cancel_subscription(args.account)
            print(f"{view.account}'s {view.plan} subscription cancelled: it lapses at "
                  f"{view.renews_at.isoformat()}")
        else:
            view = ledger.subscription(args.account)
            if view is None:
                raise LookupError(f"account {args.account!r} has no subscription")
            when = view.renews_at.isoformat() if view.renews_at else "-"
            print(f"{view.account}: {view.plan} ({view.status}), "
                  f"{float(credits(view.credits)):g} credits every "
                  f"{view.period_s / 86400:g} days, renews at {when}")
        return 0
    finally:
        ledger.close()
