"""A ledger in two shards on a real nats-server: each shard's settlement
consumer reads only its own jobs' outcomes, points owed to an account of the
other shard (an operator's RCP, a referrer's reward, and their revocation)
reach it exactly once, a crash between the two saves heals by redelivery, and
the audit replays the log of both shards against both."""
import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from bus import signing, subjects
from bus.config import Settings
from bus.credits import MICRO
from bus.events import SpotChecked, new_id
from bus.leases import Leases
from bus.partitions import shard_of_account, stamp
from bus.pricing import Pricing
from bus.publish import publish_event
from bus.streams import claims_bucket
from ledger import Reserve, Shards, open_ledger, settlement
from ledger.persistence import shard_name
from ledger.relay import Relay, last_relayed
from projections.audit import compare_ledger
from projections.invariants import Checker
from projections.replay import read_stream
from tests.fakeclock import Clock
from tests.integration.ledger.settling import USAGE, completed

N = 2


def named(shard: int, prefix: str) -> str:
    """An account name that lives in ``shard`` of ``N``."""
    return next(f"{prefix}{i}" for i in range(1000) if shard_of_account(f"{prefix}{i}", N) == shard)


@pytest.fixture(params=["sqlite", "postgres"])
async def world(request, js, fresh_nats, tmp_path):
    url, schema = None, f"t_shards_{uuid.uuid4().hex[:12]}"
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_url")  # skips, with its reason, when unset
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    settings = Settings(data_dir=tmp_path, nats_url=fresh_nats.url, ledger_partitions=N,
                        database_url=url)
    books = open_ledger(settings)
    assert isinstance(books, Shards)
    world = type("World", (), {})()
    world.js, world.books, world.settings = js, books, settings
    world.leases = Leases(await claims_bucket(js, 600), lease_s=10, clock=Clock())
    world.key = signing.load_or_create_key(tmp_path / "node.key")
    world.stop = asyncio.Event()
    settles = settlement.Settlement(books, Pricing())
    world.consumers = [asyncio.create_task(settlement.consume(
        js, settles, world.leases, world.stop, 2, shard=k, shards=N)) for k in range(N)]
    yield world
    world.stop.set()
    await asyncio.gather(*world.consumers)
    books.close()
    if url:
        with psycopg.connect(base, autocommit=True) as conn:
            for name in (schema, *(shard_name(schema, k) for k in range(1, 4))):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(name)))


async def complete(world, account: str, operator: str) -> str:
    """A job of ``account`` held, run by ``operator``'s node, and its completion logged."""
    job_id = stamp(new_id(), account)
    world.books.deposit(account, 10 * MICRO)
    world.books.reserve(account, job_id, MICRO, key_id="k", zone="eu",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5))
    held = await world.leases.acquire(job_id, signing.node_id(world.key), 1, 1)
    assert await world.leases.seal(held)
    await publish_event(world.js, completed(world.key, job_id, operator=operator), "eu")
    return job_id


async def until(check, what: str):
    for _ in range(300):
        if value := await asyncio.to_thread(check):
            return value
        await asyncio.sleep(0.02)
    raise TimeoutError(what)


async def violations(world) -> list[str]:
    """Both shards relayed onto the log, replayed by the audit, compared with both."""
    for shard in world.books.ledgers:
        relay, position = Relay(shard, world.js), await last_relayed(world.js, shard.shard)
        while (moved := await relay.once(position)) != position:
            position = moved
    checker = Checker()
    last = (await world.js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    async for batch in read_stream(world.js, 1, last):
        checker.observe_raw(batch)
    checker.finish(grace_s=3600)
    compare_ledger(checker, world.books.accounts(), checker.v)
    return checker.v.lines


async def test_each_shards_settlement_reads_only_its_own_jobs(world):
    jobs = [await complete(world, named(k, "payer"), named(k, "op")) for k in range(N)]
    for job_id in jobs:
        await until(lambda j=job_id: world.books.reservation(j).status == "settled", job_id)
    for k in range(N):
        info = await world.js.consumer_info(subjects.EVENTS_STREAM, settlement.durable(k, N))
        assert info.delivered.stream_seq > 0 and info.num_pending == 0
        assert info.delivered.consumer_seq == 1  # its own job's completion, not the other's
    assert await violations(world) == []


async def test_an_operator_in_another_shard_earns_its_rcp_there_exactly_once(world):
    payer, operator = named(0, "payer"), named(1, "op")
    job_id = await complete(world, payer, operator)
    await until(lambda: world.books.account(operator).rcp, "the operator's award")
    assert world.books.account(operator).rcp == USAGE.completion_tokens
    assert operator not in world.books.ledgers[0].account_names()  # never opened in the payer's
    # The same completion again (say, redelivered under another id) changes nothing.
    again = completed(world.key, job_id, operator=operator).model_copy(update={"event_id": new_id()})
    await publish_event(world.js, again, "eu")
    await asyncio.sleep(0.5)
    assert world.books.account(operator).rcp == USAGE.completion_tokens
    assert await violations(world) == []


async def test_a_crash_between_the_two_shards_saves_heals_by_redelivery(world):
    payer, operator = named(1, "payer"), named(0, "op")
    receiving = world.books.ledgers[0]
    real, failures = receiving.receive, []

    def crashes_once(transfers):
        if not failures:
            failures.append(transfers)
            raise ConnectionError("the receiving shard went away")
        return real(transfers)
    receiving.receive = crashes_once
    job_id = await complete(world, payer, operator)
    await until(lambda: world.books.account(operator).rcp, "the award after redelivery")
    assert failures and world.books.reservation(job_id).status == "settled"
    assert world.books.account(operator).rcp == USAGE.completion_tokens
    assert await violations(world) == []


async def test_a_referrer_in_another_shard_is_rewarded_and_a_failed_check_takes_it_all_back(
        world):
    books = world.books
    referrer, payer, operator = named(1, "ref"), named(0, "payer"), named(1, "op")
    books.sign_up(payer, books.referral_code(referrer))
    assert books.referrer_of(payer) == referrer
    job_id = await complete(world, payer, operator)
    share = await until(lambda: books.account(referrer).rcp, "the referral reward")
    assert share == books.reservation(job_id).debited * Pricing().referral_rate() // MICRO
    await publish_event(world.js, SpotChecked(
        job_id=job_id, node_id=signing.node_id(world.key), zone="eu", attempt=1, passed=False,
        reason="output differs"), "eu")
    await until(lambda: books.reservation(job_id).status == "revoked", "the revocation")
    await until(lambda: books.account(referrer).rcp == 0 and books.account(operator).rcp == 0,
                "both revoked in their shard")
    assert books.account(payer).spent == 0
    assert await violations(world) == []


def test_a_subscription_starts_in_its_accounts_shard_from_a_plan_defined_once(world):
    books = world.books
    books.define_plan("pro", 5 * MICRO, 3600)
    for k in range(N):
        account = named(k, "sub")
        books.start_subscription(account, "pro")
        assert books.account(account).balance == 5 * MICRO
    with pytest.raises(ValueError, match="exists already"):
        books.define_plan("pro", 1, 60)


def test_a_ledger_opened_with_another_shard_count_is_refused(world, tmp_path):
    for i in range(40):  # accounts in every slot
        world.books.deposit(f"acct{i}", MICRO)
    with pytest.raises(ValueError, match="several shards"):
        open_ledger(world.settings.model_copy(update={"ledger_partitions": 1}))
    with pytest.raises(ValueError, match="another INFERBUS_LEDGER_PARTITIONS"):
        open_ledger(world.settings.model_copy(update={"ledger_partitions": 4}))


def test_a_shard_that_fails_a_group_fails_only_its_own_commands(world):
    books = world.books
    accounts = [named(k, "grp") for k in range(N)]
    for account in accounts:
        books.deposit(account, 10 * MICRO)
    deadline = datetime.now(timezone.utc) + timedelta(minutes=5)
    holds = [Reserve(a, stamp(new_id(), a), MICRO, "k", "eu", deadline) for a in accounts]
    broken = books.ledgers[1]

    def down(_):
        raise ConnectionError("shard 1's database is down")
    broken.reserve_many = down
    outcomes = books.reserve_many(holds)
    assert outcomes[0].status == "pending"  # shard 0 held its job
    assert isinstance(outcomes[1], ConnectionError)
    assert books.account(accounts[0]).held == MICRO
    del broken.reserve_many
    assert books.account(accounts[1]).held == 0  # nothing half-done in the failed shard


def test_a_hold_whose_job_id_lacks_its_accounts_slot_is_refused_alone(world):
    books, account = world.books, named(0, "stamp")
    books.deposit(account, 10 * MICRO)
    deadline = datetime.now(timezone.utc) + timedelta(minutes=5)
    other = named(1, "other")  # a job id stamped for an account of the other shard
    good = Reserve(account, stamp(new_id(), account), MICRO, "k", "eu", deadline)
    bad = Reserve(account, stamp(new_id(), other), MICRO, "k", "eu", deadline)
    refused, held = books.reserve_many([bad, good])
    assert isinstance(refused, ValueError) and "slot" in str(refused)
    assert held.status == "pending" and books.account(account).held == MICRO
