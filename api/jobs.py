"""``GET /v1/jobs/{id}``: the job read model, shaped for consumers.

The read model is built by the projector, a few milliseconds behind the log;
a job just accepted may not be there yet, so a miss waits briefly before it
becomes a 404. Another account's job is a 404 too, never a 403.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime

from api.protocol import result_body
from bus.events import Usage
from projections.views import JobView, get_job

PROJECTION_LAG_S = 2.0


def _unix(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return int(value.timestamp())


def job_body(view: JobView) -> dict:
    usage = None
    if view.completion_tokens is not None and view.prompt_tokens is not None:
        usage = Usage(prompt_tokens=view.prompt_tokens, completion_tokens=view.completion_tokens)
    result = None
    if view.status == "completed" and usage is not None:
        result = result_body(view.kind, view.job_id, view.model, _unix(view.created_at),
                             view.text or "", view.finish_reason or "stop", usage)
    body = {"id": view.job_id, "object": "job", "status": view.status, "model": view.model,
            "result": result, "usage": result["usage"] if result else None, "cost": None,
            "zone": view.served_zone or view.zone, "route": view.route,
            "created_at": _unix(view.created_at), "finished_at": _unix(view.finished_at)}
    if view.status in ("failed", "expired", "cancelled"):
        body["error"] = {"code": view.error_code or view.status,
                         "message": view.error_message or f"job {view.status}"}
    return body


class JobQueries:
    def __init__(self, store) -> None:
        self._store = store

    async def find(self, job_id: str, account: str) -> JobView | None:
        deadline = time.monotonic() + PROJECTION_LAG_S
        while True:
            view = await asyncio.to_thread(get_job, self._store, job_id)
            if view is not None:
                return view if view.account == account else None
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)
