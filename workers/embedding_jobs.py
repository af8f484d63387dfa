"""An embedding job's outcome, for the job runner (``workers.runner``): the
vectors of its inputs, signed like a text result (``bus.signing``) over the
job's input hash and the vectors' digest (``bus.events.output_hash``), or why
it failed. A chat or completion worker that is handed an embedding job (or
the other way round) fails that job only, as an engine fault.
"""
from __future__ import annotations

import logging

from nacl.signing import SigningKey

from bus import signing
from bus.events import JobSubmitted, output_hash
from bus.node_messages import Completed, Failed
from workers.generation import ContextLengthExceeded

log = logging.getLogger("inferbus.worker")


async def embedding_outcome(engine, key: SigningKey, model_root: str | None, job: JobSubmitted,
                            attempt: int) -> Completed | Failed:
    """Embed ``job``'s inputs on ``engine`` (a ``workers.embedder.Embedder``)."""
    if getattr(engine, "kind", "chat") != "embedding":
        return Failed(job_id=job.job_id, attempt=attempt, code="worker_error",
                      message=f"{job.model} on this node is not an embeddings model")
    try:
        vectors, _ = await engine.embed(list(job.inputs or ()))
    except ContextLengthExceeded as exc:
        return Failed(job_id=job.job_id, attempt=attempt, code="context_length_exceeded",
                      message=str(exc)[:2000])
    except Exception as exc:  # noqa: BLE001 - any engine fault fails this job only
        log.exception("embedding job %s failed", job.job_id)
        return Failed(job_id=job.job_id, attempt=attempt, code="worker_error",
                      message=f"{type(exc).__name__}: {exc}"[:2000])
    signature = signing.sign_output(key, job.job_id, attempt, job.model, job.input_hash(),
                                    output_hash("", vectors=vectors), model_root)
    return Completed(job_id=job.job_id, attempt=attempt, text="", finish_reason="stop",
                     signature=signature, model_root=model_root, vectors=vectors)
