"""Node identity and result signatures (ed25519 via pynacl).

A node's id is its hex public key. A signature binds the node, its operator and
tier, the job, the attempt, the input and output hashes and the token counts, so
a result cannot be replayed onto another job, attempt, output or payee.
"""
from __future__ import annotations

import os
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from bus.events import JobCompleted, Usage


def load_or_create_key(path: Path) -> SigningKey:
    """The node key persists at ``path`` (mode 0600) so the node keeps its identity."""
    if path.exists():
        return SigningKey(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(bytes(key))
    return key


def node_id(key: SigningKey) -> str:
    return key.verify_key.encode().hex()


def result_payload(job_id: str, node: str, operator: str, tier: int, attempt: int,
                   input_hash: str, output_hash: str, usage: Usage) -> bytes:
    return "|".join(["inferbus-result-v2", job_id, node, operator, str(tier), str(attempt),
                     input_hash, output_hash, str(usage.prompt_tokens),
                     str(usage.completion_tokens)]).encode()


def sign_result(key: SigningKey, job_id: str, operator: str, tier: int, attempt: int,
                input_hash: str, output_hash: str, usage: Usage) -> str:
    payload = result_payload(job_id, node_id(key), operator, tier, attempt, input_hash,
                             output_hash, usage)
    return key.sign(payload).signature.hex()


def verify_result(event: JobCompleted) -> bool:
    """True when ``event.signature`` is the node's signature over the event's fields."""
    payload = result_payload(event.job_id, event.node_id, event.operator, event.tier,
                             event.attempt, event.input_hash, event.output_hash, event.usage)
    try:
        VerifyKey(bytes.fromhex(event.node_id)).verify(payload, bytes.fromhex(event.signature))
    except (BadSignatureError, ValueError):
        return False
    return True
