"""Jobs as consumers see them: ``GET``/``DELETE /v1/jobs/{id}`` from the read models,
with the result from the content store (``bus.content``) while it is kept.

The read models are built by the projector, a few milliseconds behind the
log; a job just accepted may not be there yet, so a miss waits briefly before
it becomes a 404. Another account's job is a 404 too, never a 403. A job's
cost comes from the ledger (authoritative, unlike a read model).
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime

from api.cancellation import Cancellation
from api.embedding_protocol import embeddings_body
from api.errors import APIError
from api.protocol import result_body
from bus.content import ContentStore, Output
from bus.credits import credits
from bus.events import Usage
from ledger import Books
from projections.job_status import JobView, get_job
from projections.lifecycle import CANCELLED, COMPLETED, EXPIRED, FAILED, QUEUED
from projections.store import Store

PROJECTION_LAG_S = 2.0
CANCEL_WAIT_S = 1.0


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def result_of(view: JobView, output: Output | None) -> dict | None:
    """The sync body of a completed job whose content (``output``) is still kept,
    None otherwise."""
    if view.status != COMPLETED or view.completion_tokens is None or output is None:
        return None
    if view.kind == "embedding":  # its vectors, as a float call returns them
        return None if output.vectors is None else embeddings_body(
            view.model, output.vectors, view.prompt_tokens or 0, "float")
    usage = Usage(prompt_tokens=view.prompt_tokens or 0, completion_tokens=view.completion_tokens)
    return result_body(view.kind, view.job_id, view.model, _unix(view.created_at),
                       output.text, output.finish_reason, usage, logprobs=output.logprobs,
                       tools=output.tools)


def job_body(view: JobView, cost: int | None, output: Output | None = None,
             content: str | None = None) -> dict:
    """``content``: ``expired`` or ``erased`` when a completed job's text is gone;
    while it is kept, ``content_expires_at`` says until when."""
    result = result_of(view, output)
    usage = None
    if view.completion_tokens is not None:
        usage = {"prompt_tokens": view.prompt_tokens, "completion_tokens": view.completion_tokens,
                 "total_tokens": (view.prompt_tokens or 0) + view.completion_tokens}
    body = {"id": view.job_id, "object": "job", "status": view.status, "model": view.model,
            "result": result, "usage": usage,
            "cost": None if cost is None else float(credits(cost)),
            "zone": view.served_zone or view.zone, "route": view.route,
            "created_at": _unix(view.created_at), "finished_at": _unix(view.finished_at)}
    if content is not None:
        body["content"] = content
    if output is not None and output.expires_at is not None:
        body["content_expires_at"] = _unix(output.expires_at)
    if view.status in (FAILED, EXPIRED, CANCELLED):
        body["error"] = {"code": view.error_code or view.status,
                         "message": view.error_message or f"job {view.status}"}
    return body


class JobServing:
    def __init__(self, store: Store, ledger: Books, cancellation: Cancellation,
                 content: ContentStore) -> None:
        self._store, self._ledger, self._cancellation = store, ledger, cancellation
        self._content = content

    async def get(self, account: str, job_id: str) -> dict:
        """The account's job as ``GET /v1/jobs/{id}`` shows it (404 if not its own)."""
        return await self.body(await self.find_own(job_id, account))

    async def cancel(self, account: str, job_id: str) -> dict:
        """Stop the account's job: what it produced is charged, the rest of its
        reservation refunded. The job as it stands afterwards."""
        view = await self.find_own(job_id, account)
        if not view.terminal:
            await self._cancellation.request(job_id)
            view = await self.until_terminal(view, CANCEL_WAIT_S)
            if not view.terminal and view.status == QUEUED:  # no worker holds it: close it
                await self._cancellation.close_queued(job_id, view.zone)
                view = await self.until_terminal(view, CANCEL_WAIT_S)
        return await self.body(view)

    async def find_own(self, job_id: str, account: str) -> JobView:
        view = await self.find(job_id, account)
        if view is None:
            raise APIError(404, f"No job {job_id!r}", "job_not_found")
        return view

    async def find(self, job_id: str, account: str, wait_s: float = PROJECTION_LAG_S
                   ) -> JobView | None:
        """The account's job; None (a 404) for no such job or another account's.

        The ledger knows every accepted job from its reservation on, so only a
        job that exists waits for the read model to catch up."""
        held = await asyncio.to_thread(self._ledger.reservation, job_id)
        if held is None or held.account != account:
            return None
        deadline = time.monotonic() + wait_s
        while True:
            view = await asyncio.to_thread(get_job, self._store, job_id)
            if view is not None:
                return view if view.account == account else None
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def until_terminal(self, view: JobView, timeout: float) -> JobView:
        """The job once it has ended (or as it is after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not view.terminal and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            view = await asyncio.to_thread(get_job, self._store, view.job_id) or view
        return view

    async def body(self, view: JobView) -> dict:
        """The job with its cost from the ledger and its result from the content store."""
        held = await asyncio.to_thread(self._ledger.reservation, view.job_id)
        cost = held.debited if held is not None and held.status != "pending" else None
        output, gone = None, None
        if view.status == COMPLETED:
            output = await self._content.output(view.zone, view.job_id)
            if output is None and view.text:  # logged before the content store: on the log
                output = Output(view.text, view.finish_reason or "stop", None)
            if output is None:
                gone = "erased" if await self._content.erased(view.zone, view.job_id) \
                    else "expired"
        return job_body(view, cost, output, gone)

    async def forget(self, account: str, job_id: str) -> dict:
        """Erase the account's job's content (prompt, result, check evidence) in its
        region; the log keeps its hashes, usage and money."""
        view = await self.find_own(job_id, account)
        await self._content.erase([(view.zone, view.job_id)])
        return await self.body(view)
