"""NATS credentials as data: seeds on disk, each worker's permission set, the
server's users block, and the commands that grant a node."""
from __future__ import annotations

import stat
import subprocess

import nkeys
import pytest

from bus import subjects
from bus.auth import render_authorization, worker_permissions
from bus.config import Settings
from bus.connection import nkey_seed
from bus.credentials import CredentialStore, WorkerGrant, load_or_create_seed
from bus.events import CREDIT_EVENTS
from cli.main import main
from cli.natsserver import binary

NODE, OTHER = "ab" * 32, "cd" * 32
USER = "U" + "A" * 55


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or token not in ("*", s[i]):
            return False
    return len(p) == len(s)


def may(allowed: tuple[str, ...], subject: str) -> bool:
    return any(matches(pattern, subject) for pattern in allowed)


@pytest.fixture
def eu_worker():
    return worker_permissions(USER, NODE, "m", subjects.worker_queues("eu", NODE))


def test_a_seed_is_a_private_nkey_user_that_stays_the_same(tmp_path):
    path = tmp_path / "a" / "w.seed"
    public = load_or_create_seed(path)
    assert public.startswith("U") and path.read_bytes().startswith(b"SU")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert nkeys.from_seed(bytearray(path.read_bytes().strip())).public_key.decode() == public
    assert load_or_create_seed(path) == public


def test_a_worker_may_pull_its_own_queues_and_speak_only_on_its_own_node_subjects(eu_worker):
    pub = eu_worker.publish
    for queue in ("eu", "global", subjects.node_queue(NODE, "eu")):
        consumer = subjects.consumer_name(queue, "m")
        assert may(pub, subjects.pull_next("JOBS", consumer))
        assert may(pub, f"$JS.ACK.JOBS.{consumer}.1.2.3.4.5")
        assert may(pub, subjects.consumer_create("JOBS", consumer, subjects.jobs(queue, "m")))
        assert may(eu_worker.subscribe, subjects.jobs(queue, "m"))
    for kind in (subjects.NODE_LEASE, subjects.NODE_OUTCOME, subjects.NODE_ALIVE):
        assert may(pub, subjects.node_says(NODE, kind))
        assert not may(pub, subjects.node_says(OTHER, kind))
    assert may(pub, subjects.node_live(NODE, "replies.api1"))
    assert not may(pub, subjects.node_live(OTHER, "replies.api1"))
    assert may(pub, subjects.kv_key("nodes", NODE))
    assert may(pub, "$JS.API.DIRECT.GET.KV_cancels.$KV.cancels.j")
    assert may(eu_worker.subscribe, "control.cancel.job1")
    assert may(eu_worker.subscribe, f"_INBOX.{USER}.abc")


def test_a_worker_may_not_log_money_keys_or_submissions_or_touch_others(eu_worker):
    pub = eu_worker.publish
    refused = [subjects.event(z, e.__name__) for z in ("eu", "global") for e in CREDIT_EVENTS]
    # The log, the claims and the API's inboxes are the network's: the gate writes them.
    refused += [subjects.event("eu", e) for e in ("JobStarted", "JobCompleted", "JobFailed",
                                                  "JobCancelled", "JobExpired", "NodeStrike")]
    refused += ["$KV.claims.job1", "$JS.API.DIRECT.GET.KV_claims.$KV.claims.j", "replies.api-1",
                "$KV.grants." + NODE, "deadletter.worker"]
    refused += [subjects.event("eu", "JobSubmitted"), subjects.event("eu", "JobEscalated"),
                subjects.key_issued("h"), subjects.key_revoked("h"), subjects.subcloud_created("s"),
                subjects.jobs("eu", "m"),  # queueing a job
                subjects.pull_next("JOBS", subjects.consumer_name("na", "m")),
                subjects.pull_next("JOBS", subjects.consumer_name("eu", "other-model")),
                subjects.consumer_create("JOBS", "work_eu_m", subjects.jobs("na", "m")),
                "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.work_eu_m",  # no filter in the subject
                "$JS.API.CONSUMER.DELETE.JOBS.work_eu_m", subjects.kv_key("nodes", OTHER),
                "$KV.cancels.job1", "$JS.API.STREAM.CREATE.EVIL", "$JS.API.STREAM.UPDATE.EVENTS",
                "$JS.API.STREAM.DELETE.EVENTS", "$JS.API.STREAM.PURGE.JOBS",
                "$JS.API.STREAM.MSG.DELETE.EVENTS", "$JS.API.STREAM.MSG.GET.EVENTS",
                "$JS.ACK.JOBS.work_na_m.1.2.3.4.5"]
    assert [s for s in refused if may(pub, s)] == []
    for subject in ("_INBOX.other.x", "jobs.na.m", "events.eu.JobSubmitted", "replies.api-1"):
        assert not may(eu_worker.subscribe, subject)


def test_a_private_subcloud_worker_pulls_only_its_node_and_pool():
    perms = worker_permissions(USER, NODE, "m", subjects.worker_queues("eu", NODE, "acme", False))
    pools = {q for q in ("eu", "global", "eu-sc_acme", "global-sc_acme",
                         subjects.node_queue(NODE, "eu"))
             if may(perms.publish, subjects.pull_next("JOBS", subjects.consumer_name(q, "m")))}
    assert pools == {"eu-sc_acme", "global-sc_acme", subjects.node_queue(NODE, "eu")}


def test_the_users_file_is_a_config_nats_server_accepts(tmp_path):
    store = CredentialStore(tmp_path)
    store.grant_worker(WorkerGrant("eu-1", "eu", "m", NODE))
    config = store.write_config()
    text = config.read_text()
    assert text.count("{nkey:") == 2 and '"$JS.API.STREAM.INFO.JOBS"' in text
    checked = subprocess.run([binary(), "-t", "-c", str(config)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rendering_no_users_is_refused():
    with pytest.raises(ValueError):
        render_authorization([])


def test_a_process_uses_its_own_seed_else_the_data_dirs_service_seed(tmp_path):
    assert nkey_seed(Settings(data_dir=tmp_path)) is None
    service = CredentialStore(tmp_path).ensure_service()
    assert nkey_seed(Settings(data_dir=tmp_path)) == service
    own = tmp_path / "own.seed"
    assert nkey_seed(Settings(data_dir=tmp_path, nats_nkey_seed=own)) == own


def test_nodes_add_grants_a_node_and_prints_its_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INFERBUS_DATA_DIR", str(tmp_path))
    assert main(["nodes", "add", "--zone", "eu", "--model", "m", "--node-id", NODE]) == 0
    out = capsys.readouterr().out
    seed = CredentialStore(tmp_path).worker_seed("eu-m")
    assert str(seed) in out and seed.exists()
    assert f"node_{NODE[:16]}, eu, global" in out
    assert [g.node_id for g in CredentialStore(tmp_path).grants()] == [NODE]
    assert main(["nodes", "add", "--zone", "eu", "--model", "m", "--node-name", "mine"]) == 0
    assert (tmp_path / "node" / "mine.key").exists()  # a local node gets its key made


@pytest.mark.parametrize("args", [["--zone", "e.u", "--model", "m"],
                                  ["--zone", "eu", "--model", "m", "--node-id", "xyz"]])
def test_nodes_add_with_bad_input_says_so_in_one_line(tmp_path, monkeypatch, capsys, args):
    monkeypatch.setenv("INFERBUS_DATA_DIR", str(tmp_path))
    assert main(["nodes", "add", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("inferbus nodes: ") and len(err.strip().splitlines()) == 1
