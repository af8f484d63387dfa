"""Webhook routes for an account's keys.

``GET /v1/webhooks/secret``: the secret the account's webhooks are signed with
(``api.webhook_signing``). ``GET /v1/jobs/{id}/webhook``: an async job's
delivery record: target, attempts, last answer, when delivered or given up
(404 for a job without a webhook, or another account's).
The composition root puts the network secret and the targets on
``app.state`` (``webhook_secret``, ``webhook_targets``).
"""
from __future__ import annotations

import re

from fastapi import APIRouter, Request

from api.deps import PrincipalDep
from api.errors import APIError
from api.webhook_delivery import DELIVERY, SIGNATURE
from api.webhook_signing import account_secret
from api.webhook_targets import HEADER

router = APIRouter()
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@router.get("/v1/webhooks/secret")
async def webhook_secret(who: PrincipalDep, request: Request) -> dict:
    return {"object": "webhook_secret", "account": who.account,
            "secret": account_secret(request.app.state.webhook_secret, who.account),
            "signature_header": SIGNATURE, "delivery_header": DELIVERY, "target_header": HEADER,
            "scheme": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>' under the secret>"}


@router.get("/v1/jobs/{job_id}/webhook")
async def job_webhook(job_id: str, who: PrincipalDep, request: Request) -> dict:
    # Only a job id can be a key of the bucket (others would be refused by NATS).
    found = await request.app.state.webhook_targets.get(job_id) if JOB_ID.fullmatch(job_id) \
        else None
    if found is None or found[0].account != who.account:
        raise APIError(404, f"No webhook for job {job_id!r}", "webhook_not_found")
    target = found[0]
    return {"object": "job.webhook", "job_id": job_id, "url": target.url,
            "delivery_id": target.delivery_id, "attempts": target.attempts,
            "last_status": target.last_status, "last_error": target.last_error,
            "last_attempt_at": target.last_at, "delivered_at": target.delivered_at,
            "given_up_at": target.given_up_at}
