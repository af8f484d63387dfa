"""Helpers of the settlement and expiry tests: a node's signed result, a
reservation to settle, waiting for its resolution."""
import asyncio
from datetime import datetime, timedelta, timezone

from bus import signing
from bus.events import JobCompleted, Usage, output_hash

USAGE = Usage(prompt_tokens=10, completion_tokens=20)


def reserve(ledger, job_id: str, account: str = "acme") -> None:
    ledger.deposit(account, 10_000_000)
    ledger.reserve(account, job_id, 1_000_000, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


async def run_and_seal(world, job_id: str, key, attempt: int = 1, message: int = 1) -> None:
    """``key``'s node takes the job's lease and seals it, as a worker does before it
    publishes its outcome."""
    held = await world.leases.acquire(job_id, signing.node_id(key), attempt, message)
    assert await world.leases.seal(held)


def completed(key, job_id: str, **kw) -> JobCompleted:
    """``key``'s node's validly signed result (``kw`` overrides fields before signing)."""
    fields = {**dict(job_id=job_id, operator="op", tier=1, attempt=1, input_hash="i",
                     output_hash=output_hash("x")), **kw}
    model = fields.pop("model", "m")
    sig = signing.sign_result(key, usage=USAGE, **fields)
    return JobCompleted(model=model, node_id=signing.node_id(key), zone="eu", text="x",
                        finish_reason="stop", usage=USAGE, signature=sig, **fields)


async def resolved(ledger, job_id: str):
    for _ in range(200):
        view = await asyncio.to_thread(ledger.reservation, job_id)
        if view.status != "pending":
            return view
        await asyncio.sleep(0.02)
    raise TimeoutError(job_id)
