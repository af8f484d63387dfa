"""Node identity and result signatures (ed25519 via pynacl).

A node's id is its hex public key. A node signs what it vouches for: the job,
the attempt, the model and the root of its weights, and the hashes of the input and of its output, so a
result cannot be replayed onto another job, attempt or output
(:func:`sign_output`). Usage, operator and tier are not the node's to claim:
the gate recounts and looks them up before it logs the ``JobCompleted``. Older
events carry the earlier form, which also signed those claims (``sign_result``).
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


def output_payload(job_id: str, node: str, attempt: int, model: str, input_hash: str,
                   output_hash: str, model_root: str | None = None) -> bytes:
    """What a node signs; with ``model_root``, the weights it ran are part of it."""
    if model_root is None:
        return "|".join(["inferbus-output-v3", job_id, node, str(attempt), model, input_hash,
                         output_hash]).encode()
    return "|".join(["inferbus-output-v4", job_id, node, str(attempt), model, model_root,
                     input_hash, output_hash]).encode()


def sign_output(key: SigningKey, job_id: str, attempt: int, model: str, input_hash: str,
                output_hash: str, model_root: str | None = None) -> str:
    """The node's signature over its output of one attempt of one job, run with the
    weights whose root is ``model_root``."""
    payload = output_payload(job_id, node_id(key), attempt, model, input_hash, output_hash,
                             model_root)
    return key.sign(payload).signature.hex()


def verify_signature(node: str, payload: bytes, signature: str) -> bool:
    try:
        VerifyKey(bytes.fromhex(node)).verify(payload, bytes.fromhex(signature))
    except (BadSignatureError, ValueError):
        return False
    return True


def verify_result(event: JobCompleted) -> bool:
    """True when ``event.signature`` is its node's signature over its output (or,
    for an event of the earlier form, over the event's fields)."""
    if event.model_root is not None:
        return verify_signature(event.node_id, output_payload(
            event.job_id, event.node_id, event.attempt, event.model, event.input_hash,
            event.output_hash, event.model_root), event.signature)
    return verify_signature(event.node_id, output_payload(
        event.job_id, event.node_id, event.attempt, event.model, event.input_hash,
        event.output_hash), event.signature) or verify_signature(event.node_id, result_payload(
            event.job_id, event.node_id, event.operator, event.tier, event.attempt,
            event.input_hash, event.output_hash, event.usage), event.signature)
