"""Per-account rate limits that hold across every API instance.

The server counts, not the instances: the stream ``RATES`` keeps one small
message per admitted request on the account's subject
(:func:`bus.subjects.accounts.account_rate`) for one window (``max_age``), at most
``per_minute`` per subject, and refuses a publish beyond that
(``discard_new_per_subject``). Admission is one publish: stored means
admitted, refused means 429, whichever instance asks and however many race.
The window slides: a slot frees when its message is a minute old, and
``Retry-After`` says when the oldest one goes.

Costs one JetStream round trip per request (memory storage). Should the stream
be unreachable, the request is admitted, and so are the next ``UNREACHABLE_S``
seconds' without asking (the per-instance bucket of
:class:`api.limits.KeyLimiter` still bounds them): a rate limit is not worth an
outage, nor a timeout on every request. Instances must agree on ``per_minute``; the last to start sets it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from datetime import datetime, timezone

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, Placement, StorageType, StreamConfig
from nats.js.errors import APIError as JetStreamError
from nats.js.errors import NoStreamResponseError, NotFoundError

from api.errors import APIError
from bus.subjects import accounts as subjects
from bus.streams import patiently

log = logging.getLogger(__name__)
WINDOW_S = 60.0
PUBLISH_TIMEOUT_S = 1.0
UNREACHABLE_S = 5.0  # after a count that could not be made, how long to not try
PER_SUBJECT_LIMIT = 10077  # JetStream: maximum messages per subject exceeded


def rates_stream_config(per_minute: int, replicas: int = 1,
                        placement: Placement | None = None) -> StreamConfig:
    return StreamConfig(
        name=subjects.RATES_STREAM, subjects=[subjects.all_account_rates()],
        storage=StorageType.MEMORY, num_replicas=replicas, max_age=WINDOW_S,
        max_msgs_per_subject=per_minute, discard=DiscardPolicy.NEW,
        discard_new_per_subject=True, allow_direct=True, placement=placement)


def account_digest(account: str) -> str:
    return hashlib.sha256(account.encode()).hexdigest()[:32]


class AccountRate:
    """At most ``per_minute`` requests per account per sliding minute, network-wide."""

    def __init__(self, js: JetStreamContext, per_minute: int) -> None:
        self._js, self.per_minute = js, per_minute
        self._skip_until = 0.0  # the stream was unreachable: admit without asking till then

    async def ensure(self, replicas: int = 1, placement: Placement | None = None) -> None:
        """Make the ``RATES`` stream, or set its limit to this instance's."""
        config = rates_stream_config(self.per_minute, replicas, placement)

        async def step() -> None:
            try:
                info = await self._js.stream_info(config.name)
            except NotFoundError:
                try:
                    await self._js.add_stream(config)
                    return
                except JetStreamError as exc:
                    if exc.err_code != 10058:  # made by another instance just now
                        raise
                info = await self._js.stream_info(config.name)
            if info.config.max_msgs_per_subject != self.per_minute:
                info.config.max_msgs_per_subject = self.per_minute
                await self._js.update_stream(info.config)
        await patiently(step, f"stream {config.name}")

    async def admit(self, account: str) -> None:
        """Count one request of ``account``; 429 with ``Retry-After`` over the limit."""
        if time.monotonic() < self._skip_until:
            return
        subject = subjects.account_rate(account_digest(account))
        try:
            # Not an event, and meant to be counted every time: no Nats-Msg-Id, so
            # none of bus.publish's dedup (the one publish path is for the log).
            await self._js.publish(subject, b"", timeout=PUBLISH_TIMEOUT_S,
                                   stream=subjects.RATES_STREAM)
        except JetStreamError as exc:
            if exc.err_code != PER_SUBJECT_LIMIT:
                log.warning("account rate not counted: %s", exc)
                return
            raise APIError(429, f"over {self.per_minute} requests per minute for this "
                           "account", "rate_limit_exceeded",
                           headers={"Retry-After": str(await self._retry_after(subject))}
                           ) from None
        except (NatsTimeout, NoRespondersError, NoStreamResponseError) as exc:
            # Its region is down or electing a leader: do not make every request
            # wait out a timeout meanwhile.
            self._skip_until = time.monotonic() + UNREACHABLE_S
            log.warning("account rate not counted for %.0f s: %s", UNREACHABLE_S,
                        type(exc).__name__)

    async def _retry_after(self, subject: str) -> int:
        """Seconds until the oldest request of the window leaves it."""
        try:
            first = await self._js.get_msg(subjects.RATES_STREAM, seq=1, subject=subject,
                                           next=True, direct=True)
            sent = datetime.strptime(first.headers["Nats-Time-Stamp"][:26].rstrip("Z"),
                                     "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
            left = WINDOW_S - (datetime.now(timezone.utc) - sent).total_seconds()
            return max(1, math.ceil(left))
        except Exception:  # noqa: BLE001 - a hint only: the whole window is always right
            return int(WINDOW_S)


async def account_rate_of(js: JetStreamContext, settings) -> AccountRate | None:
    """The network-wide account rate ``settings`` ask for (None: off), its stream made."""
    per_minute = settings.account_rate_per_minute
    if per_minute is None:
        per_minute = settings.rate_per_minute
    if per_minute <= 0:
        return None
    rate = AccountRate(js, per_minute)
    await rate.ensure(settings.stream_replicas, settings.home_placement())
    return rate
