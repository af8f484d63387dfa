"""Webhook names: the KV bucket of each async job's callback target and
delivery record (``api.webhook_targets``), and the durable consumer of job
outcomes that delivers them (``api.webhook_dispatch``). Part of
:mod:`bus.subjects`; the bucket's stream is ``KV_webhooks``.
"""
from __future__ import annotations

WEBHOOKS_BUCKET = "webhooks"
WEBHOOKS_DURABLE = "webhooks"
