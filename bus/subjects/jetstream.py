"""JetStream API, KV and object store subjects, named here so NATS permissions (``bus.auth``)
can grant exactly what one process does. Part of :mod:`bus.subjects`, which
re-exports all of it.
"""
from __future__ import annotations

from bus.subjects.tokens import check_token

def inbox_prefix(user: str) -> str:
    """Root of one nkey user's private reply inboxes, so it hears only its own replies."""
    return f"_INBOX.{check_token(user, 'user')}"


def below(prefix: str) -> str:
    """Every subject under ``prefix``."""
    return f"{prefix}.>"


def stream_info(stream: str) -> str:
    return f"$JS.API.STREAM.INFO.{stream}"


def consumer_create(stream: str, consumer: str, filter_subject: str) -> str:
    """Create-or-update of one named consumer; the filter in the subject pins its filter."""
    return f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}"


def consumer_info(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"


def acks(stream: str, consumer: str) -> str:
    """Acks, naks, in-progress and term of the messages one consumer delivered."""
    return f"$JS.ACK.{stream}.{consumer}.>"


def acked_stream(reply: str | None) -> str | None:
    """The stream a delivered message's ack subject names (see below)."""
    tokens = (reply or "").split(".")
    if tokens[:2] != ["$JS", "ACK"] or len(tokens) not in (9, 11, 12):
        return None
    return tokens[2] if len(tokens) == 9 else tokens[4]


def acked_stream_sequence(reply: str) -> int | None:
    """The stream sequence a delivered message's ack subject names, None when
    ``reply`` is not one: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>
    .<ts>.<pending>``, or the v2 form with ``<domain>.<account hash>`` after
    ``ACK`` (and a trailing token)."""
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"] or len(tokens) not in (9, 11, 12):
        return None
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_key(bucket: str, key: str) -> str:
    """Put, create, update, delete and purge of one key are publishes on this subject."""
    return f"$KV.{bucket}.{check_token(key, 'key')}"


def kv_reads(bucket: str) -> list[str]:
    """The requests that read a bucket's keys (direct get, or message get)."""
    stream = kv_stream(bucket)
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}"]


def object_stream(bucket: str) -> str:
    """The stream behind object store ``bucket``."""
    return f"OBJ_{bucket}"


def object_chunks(bucket: str, nuid: str) -> str:
    """The subject holding the parts of one object of store ``bucket``."""
    return f"$O.{bucket}.C.{check_token(nuid, 'nuid')}"


def object_store_subjects(bucket: str) -> list[str]:
    """Every object's parts and every object's metadata, in store ``bucket``."""
    return [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]
