"""``inferbus keys``: create, list and revoke an account's API keys.

``keys create ACCOUNT [--name N] [--spend-limit C] [--expires-in-days D]
[--subcloud S] [--admin | --no-admin] [--credits C]`` prints the key once,
alone on its last line; an account's first key is its admin key (it manages
the account's keys over HTTP) unless ``--no-admin``. ``keys list ACCOUNT``
reads the keys read model; ``keys revoke KEY_ID`` logs ``ApiKeyRevoked``, and
every API instance refuses the key within a second.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone

from bus.config import Settings
from bus.credits import credits


def add_parser(sub) -> None:
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    kc = keys.add_parser("create", help="issue a key; printed once on the last line")
    kc.add_argument("account", nargs="?", help="the account the key spends for")
    kc.add_argument("--account", dest="account_option", help=argparse.SUPPRESS)
    kc.add_argument("--name", help="a label, shown in listings")
    kc.add_argument("--spend-limit", help="credits the key may spend (debits and holds)")
    kc.add_argument("--expires-in-days", type=int, help="the key is refused after this")
    kc.add_argument("--subcloud")
    kc.add_argument("--webhook", help="where its async jobs' outcomes go when a call names "
                    "none (see docs/webhooks.md)")
    kc.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None,
                    help="may manage the account's keys (default: the account's first key)")
    kc.add_argument("--credits", default="0", help="credits deposited for the account first")
    keys.add_parser("list", help="an account's keys").add_argument("account")
    keys.add_parser("revoke", help="revoke a key by its id (see keys list)"
                    ).add_argument("key_id")


def dispatch(args, settings: Settings) -> int:
    from cli import admin
    if args.keys_cmd == "list":
        print(table(admin.list_keys(settings, args.account)))
        return 0
    if args.keys_cmd == "revoke":
        view = admin.run(admin.revoke_key(settings, args.key_id))
        print(f"key {view.key_id} of account {view.account} revoked")
        return 0
    account = args.account or args.account_option
    if not account or (args.account and args.account_option):
        raise ValueError("name the account once: keys create ACCOUNT")
    micro = admin.parse_credits(args.credits) if args.credits not in ("0", "") else 0
    limit = admin.parse_credits(args.spend_limit) if args.spend_limit is not None else None
    expires = None
    if args.expires_in_days is not None:
        if not 1 <= args.expires_in_days <= 3650:
            raise ValueError("--expires-in-days must be between 1 and 3650")
        expires = datetime.now(timezone.utc) + timedelta(days=args.expires_in_days)
    webhook = None
    if args.webhook is not None:
        from api.errors import APIError
        from api.webhook_targets import check_url
        try:
            webhook = admin.run(check_url(args.webhook.strip(), settings.webhook_allow_private,
                                          "--webhook"))
        except APIError as exc:
            raise ValueError(exc.message) from None
    key = admin.run(admin.create_key(settings, account, args.subcloud, micro, name=args.name,
                                     admin=args.admin, spend_limit=limit, expires_at=expires,
                                     webhook_url=webhook))
    print(f"API key for account {account!r} (shown once, keep it safe):")
    print(key)
    return 0


def table(views) -> str:
    if not views:
        return "no keys"
    lines = [f"{'ID':16}  {'NAME':20}  {'ADMIN':5}  {'SPENT':>12}  {'LIMIT':>12}  "
             f"{'EXPIRES':20}  STATUS"]
    for v in views:
        status = "revoked" if v.revoked_at else (
            "expired" if v.expires_at and v.expires_at <= datetime.now(timezone.utc) else "active")
        limit = "-" if v.spend_limit is None else f"{float(credits(v.spend_limit)):.6g}"
        expires = v.expires_at.strftime("%Y-%m-%d %H:%M") if v.expires_at else "never"
        lines.append(f"{v.key_id:16}  {(v.name or '-')[:20]:20}  {'yes' if v.admin else 'no':5}  "
                     f"{float(credits(v.spent)):>12.6g}  {limit:>12}  {expires:20}  {status}")
    return "\n".join(lines)
