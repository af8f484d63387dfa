"""The location checks: every few seconds the verifier reads where each node's
connections come from and records its verdict (``bus.node_location``) in its grant.

The servers say where a connection comes from; the node cannot. Measured on
nats-server 2.15.1: a system account user's request on
``$SYS.REQ.ACCOUNT.$G.CONNZ`` with ``{"auth": true}`` is answered by every
server that has connections of the app account ``$G`` (where the nkey users of
``bus.credentials`` land), each with its own: ``ip``, ``rtt`` (a Go duration,
from the server's PINGs) and, for an nkey user, ``authorized_user``: its public
key, which the grant's ``nats_user`` names. ``server.cluster`` is the answering
server's cluster, i.e. its region (``cli/supercluster.py``); a lone server has
none. (``$SYS.REQ.SERVER.PING.CONNZ`` also answers, but leaves
``authorized_user`` out unless asked for ``auth``.)

A node that is not connected keeps its last verdict (it is not live either);
a new connection is judged within one round. Verdicts are written by
compare-and-set, only when they change: the spot checks write the same grants.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from bus.connection import server_list
from bus.geolocation import GeoIP
from bus.grants import GrantBook, NodeGrant, change_grant
from bus.node_location import (Bounds, Connection, Finding, bounds_of, checks_on, judge,
                               parse_rtt)
from bus.node_record import NodeRecord
from bus.regions import Layout
from bus.streams import nodes_bucket

log = logging.getLogger("inferbus.verifier")
APP_ACCOUNT = "$G"
CONNZ = f"$SYS.REQ.ACCOUNT.{APP_ACCOUNT}.CONNZ"
LIMIT = 100_000  # connections per server in one answer (the server's default is 1024)
FIRST_ANSWER_S = 2.0
QUIET_S = 0.25  # after the last answer: every server has answered
EVERY_S = 10.0
OPEN_NETWORK = "no NATS user of its own (an open network): its connection cannot be found"


async def connections(sys_nc: Client) -> dict[str, list[Connection]]:
    """Every server's connections of the app account, by nkey user."""
    inbox = sys_nc.new_inbox()
    sub = await sys_nc.subscribe(inbox)
    found: dict[str, list[Connection]] = {}
    try:
        await sys_nc.publish(CONNZ, json.dumps({"auth": True, "limit": LIMIT}).encode(),
                             reply=inbox)
        wait = FIRST_ANSWER_S
        while True:
            try:
                msg = await sub.next_msg(timeout=wait)
            except NatsTimeout:
                break
            wait = QUIET_S
            body = json.loads(msg.data)
            if "error" in body:
                raise RuntimeError(f"connz refused: {body['error']}")
            region = (body.get("server") or {}).get("cluster") or None
            for conn in (body.get("data") or {}).get("connections") or ():
                user, ip = conn.get("authorized_user"), conn.get("ip")
                if user and ip:
                    # "0s" is a round trip not measured yet, not a zero-length one.
                    found.setdefault(user, []).append(
                        Connection(ip, parse_rtt(conn.get("rtt")) or None, region))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


class LocationChecker:
    """Judges every granted node from one connz round and records what changed."""

    def __init__(self, grants: KeyValue, nodes: KeyValue, geoip: GeoIP, layout: Layout,
                 bounds: Bounds = Bounds(), table: dict[str, str] | None = None) -> None:
        self.grants, self.nodes, self.geoip = grants, nodes, geoip
        self.layout, self.bounds, self.table = layout, bounds, table

    async def check(self, sys_nc: Client, grants: list[NodeGrant]) -> dict[str, Finding]:
        """One round: the findings that changed a grant, by node id."""
        seen = await connections(sys_nc)
        changed = {}
        for grant in grants:
            finding = await self.finding(grant, seen)
            if finding is not None and await self.record(grant, finding):
                changed[grant.node_id] = finding
        return changed

    async def finding(self, grant: NodeGrant,
                      seen: dict[str, list[Connection]]) -> Finding | None:
        if not grant.active:
            return None  # no NATS user while suspended: nothing to learn
        if grant.nats_user is None:
            return Finding("unchecked", OPEN_NETWORK)
        mine = seen.get(grant.nats_user, [])
        if not mine and grant.location != "unchecked":
            return None  # away: its last verdict stands until it connects again
        # Region names are cluster names only in a multi-region layout.
        region = self.layout.region_of(grant.zone) if self.layout.split else None
        return judge(grant.zone, region, [(c, self.geoip.place(c.ip)) for c in mine],
                     await self.declared(grant.node_id), self.bounds, self.table)

    async def declared(self, node_id: str) -> tuple[float, float] | None:
        """The coordinates in the node's last heartbeat, if any."""
        try:
            entry = await self.nodes.get(node_id)
            record = NodeRecord.model_validate_json(entry.value or b"")
        except (KeyNotFoundError, ValidationError):
            return None
        return None if record.lat is None or record.lon is None else (record.lat, record.lon)

    async def record(self, grant: NodeGrant, finding: Finding) -> bool:
        """Write ``finding`` into the grant unless it says so already, or the grant
        changed hands (another NATS user) meanwhile; True when written."""
        written = []

        def change(known: NodeGrant | None) -> NodeGrant | None:
            written.clear()
            if known is None or known.nats_user != grant.nats_user or \
                    (known.location, known.location_note) == (finding.location, finding.note):
                return None
            written.append(True)
            return known.model_copy(update={"location": finding.location,
                                            "location_note": finding.note})
        await change_grant(self.grants, grant.node_id, change)
        if not written:
            return False
        if finding.location == "failed":
            log.warning("node %s failed its location check: %s", grant.node_id[:12], finding.note)
        return True


async def follow_locations(settings, js: JetStreamContext, grants: KeyValue, book: GrantBook,
                           stop: asyncio.Event) -> None:
    """Check locations every ``location_check_every_s`` until ``stop``; returns at once
    when the network does not check them (``bus.node_location.checks_on``)."""
    if not checks_on(settings):
        log.info("location checks off (they need INFERBUS_GEOIP_DB and "
                 "INFERBUS_NATS_SYSTEM_USER)")
        return
    nodes = await nodes_bucket(js, settings.stream_replicas, placement=settings.home_placement())
    checker = LocationChecker(grants, nodes, GeoIP(settings.geoip_db), settings.layout(),
                              bounds_of(settings), settings.zone_table())
    every = float(getattr(settings, "location_check_every_s", EVERY_S))
    sys_nc: Client | None = None
    try:
        while not stop.is_set():
            try:
                if sys_nc is None or sys_nc.is_closed:
                    # No reconnecting of its own: a lost connection closes, and the next
                    # round connects again (a wrong password fails one round, not forever).
                    sys_nc = await nats.connect(
                        server_list(settings.resolved_nats_url()), name="inferbus-locations",
                        user=settings.nats_system_user,
                        password=getattr(settings, "nats_system_password", None),
                        connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
                await checker.check(sys_nc, book.all())
            except Exception:  # noqa: BLE001 - servers away or the user refused: next round
                log.warning("location check round failed", exc_info=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        if sys_nc is not None:
            with contextlib.suppress(Exception):
                await sys_nc.close()
