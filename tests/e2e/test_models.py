"""Models by content address, end to end under real credentials: an admin pushes
a model; nodes with empty data dirs fetch it through the gate by its root and
serve the same outputs; a node running other weights under the same name gets
no jobs; a node not granted the model cannot read it."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch
from nats.js.api import ConsumerConfig
from safetensors.torch import load_file, save_file

from bus import signing, subjects
from bus.events import JobCompleted
from bus.model_fetch import ModelAnswer, ModelAsk
from bus.model_manifest import build_manifest
from tests.conftest import TINY_MODEL
from tests.natsauth import AuthNatsServer, completions_of, connect_as
from tests.stack import Stack

NODES = {"node-eu": ("eu", TINY_MODEL), "node-na": ("na", TINY_MODEL),
         "node-me": ("me", TINY_MODEL), "node-x": ("eu", "other-model"),
         "node-sa": ("sa", TINY_MODEL), "node-oc": ("oc", "big")}


@pytest.fixture(scope="module")
def network(tmp_path_factory, models_dir):
    """An auth server, the services on the service user, four granted nodes (each
    with a data dir of its own and nothing in it but its key) and the tiny model
    pushed by the admin. The stack's own data dir holds no model: the gate and the
    verifier fetch what they need from the store too."""
    tmp = tmp_path_factory.mktemp("models-e2e")
    server = AuthNatsServer(tmp)
    stack = Stack(tmp, server.url)
    ids = {}
    for name, (zone, model) in NODES.items():
        ids[name] = signing.node_id(signing.load_or_create_key(tmp / name / "node" / f"{name}.key"))
        stack.cli("nodes", "add", "--zone", zone, "--model", model, "--node-name", name,
                  "--node-id", ids[name], "--verified")
    server.start()
    try:
        stack.start_projector()
        stack.start_api()
        pushed = stack.cli("models", "push", str(models_dir / TINY_MODEL), "--name", TINY_MODEL)
        root = build_manifest(models_dir / TINY_MODEL).root()
        assert f"root {root}" in pushed.stdout, pushed.stdout + pushed.stderr
        yield stack, ids, root, tmp, models_dir
    finally:
        stack.stop()
        server.stop()


def start_node(stack: Stack, tmp, name: str, model: str) -> subprocess.Popen:
    zone = NODES[name][0]
    seed = stack.data_dir / "nats-auth" / "workers" / f"{name}.seed"
    log = open(tmp / f"{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--zone", zone, "--model", model,
         "--node-name", name],
        env={**stack.env(), "INFERBUS_DATA_DIR": str(tmp / name),
             "INFERBUS_NATS_NKEY_SEED": str(seed)}, stdout=log, stderr=subprocess.STDOUT)
    stack.procs[name] = proc
    return proc


def ask(client: openai.OpenAI, zone: str):
    return client.chat.completions.with_raw_response.create(
        model=TINY_MODEL, max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": "the quick brown fox"}],
        extra_headers={"X-Inferbus-Zone": zone})


def test_fresh_nodes_fetch_the_pushed_model_by_root_and_serve_the_same_outputs(network):
    stack, ids, root, tmp, models_dir = network
    for name in ("node-eu", "node-na"):
        start_node(stack, tmp, name, TINY_MODEL)
    key = stack.new_key("mia", "100")
    stack.wait_for_model(key, TINY_MODEL, zones=2)
    for name in ("node-eu", "node-na"):  # fetched and checked into a root dir of its own
        assert build_manifest(tmp / name / "models" / "roots" / root).root() == root
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                           timeout=60)
    replies = {zone: ask(client, zone) for zone in ("eu", "na")}
    texts = {zone: r.parse().choices[0].message.content for zone, r in replies.items()}
    assert texts["eu"] and texts["eu"] == texts["na"]
    for zone, reply in replies.items():
        assert reply.headers["x-inferbus-zone"] == zone
        (done,) = completions_of(stack.nats_url, stack.data_dir, reply.headers["x-inferbus-job"])
        assert done.node_id == ids[f"node-{zone}"] and done.model_root == root
        assert signing.verify_result(done)
    listed = httpx.get(f"{stack.base_url}/v1/models",
                       headers={"Authorization": f"Bearer {key}"}).json()["data"]
    (model,) = [m for m in listed if m["id"] == TINY_MODEL]
    assert model["root"] == root and model["size_bytes"] > 0 and model["regions"]


def test_a_node_serving_other_weights_under_the_name_gets_no_jobs(network):
    stack, ids, root, tmp, models_dir = network
    other = tmp / "other-weights" / TINY_MODEL  # the name, other bytes
    shutil.copytree(models_dir / TINY_MODEL, other)
    weights = load_file(other / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] * 0.5
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    start_node(stack, tmp, "node-me", str(other))
    if "node-eu" not in stack.procs:
        start_node(stack, tmp, "node-eu", TINY_MODEL)
    key = stack.new_key("lev", "100")
    stack.wait_for_model(key, TINY_MODEL)
    _wait_for_log(tmp / "node-me.log", "serving")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                           timeout=60)
    served_by = []
    for _ in range(4):
        reply = ask(client, "me")
        assert reply.parse().choices[0].message.content
        served_by += [e.node_id for e in completions_of(stack.nats_url, stack.data_dir,
                                                        reply.headers["x-inferbus-job"])]
        assert reply.headers["x-inferbus-route"] == "global"  # no node of zone me is offered it
    assert len(served_by) == 4 and ids["node-me"] not in served_by


async def test_a_node_not_granted_the_model_cannot_read_it(network):
    stack, ids, root, tmp, models_dir = network
    seed = stack.data_dir / "nats-auth" / "workers" / "node-x.seed"
    nc, refusals = await connect_as(stack.nats_url, tmp / "node-x", seed)
    try:
        reply = await nc.request(subjects.node_says(ids["node-x"], subjects.NODE_MODEL),
                                 ModelAsk(op="manifest", name=TINY_MODEL).model_dump_json().encode(),
                                 timeout=10)
        answer = ModelAnswer.model_validate_json(reply.data)
        assert not answer.ok and f"does not list model {TINY_MODEL}" in answer.reason
        stream = subjects.object_stream(subjects.MODEL_CHUNKS)
        others = subjects.pull_next(stream, subjects.fetch_consumer(ids["node-eu"]))
        direct = f"$JS.API.DIRECT.GET.{stream}"
        create = f"$JS.API.CONSUMER.CREATE.{stream}.mine"
        js = nc.jetstream()
        attempts = {
            others: nc.request(others, b'{"batch": 1}', timeout=1),
            direct: nc.request(direct, b'{"last_by_subj": "$O.model_chunks.M.x"}', timeout=1),
            create: js.add_consumer(stream, ConsumerConfig(name="mine"), timeout=1),
        }
        results = await asyncio.gather(*attempts.values(), return_exceptions=True)
        for subject, result in zip(attempts, results):
            assert isinstance(result, Exception), (subject, result)
            await refusals.expect(subject)
        forged = subjects.object_chunks(subjects.MODEL_CHUNKS, "forged")
        await nc.publish(forged, b"other weights")  # nor can it write the store
        await refusals.expect(forged)
    finally:
        await nc.close()


def _wait_for_log(path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, path.read_text(errors="replace")[-2000:]
        time.sleep(0.2)


def test_a_new_version_rolls_out_while_the_old_one_serves_until_it_is_removed(network):
    stack, ids, root, tmp, models_dir = network
    v2_dir = tmp / "v2" / TINY_MODEL
    shutil.copytree(models_dir / TINY_MODEL, v2_dir)
    weights = load_file(v2_dir / "model.safetensors")
    last = sorted(weights)[-1]
    weights[last] = weights[last] + 0.25
    save_file(weights, v2_dir / "model.safetensors", metadata={"format": "pt"})
    v2 = build_manifest(v2_dir).root()
    pushed = stack.cli("models", "push", str(v2_dir), "--name", TINY_MODEL)
    assert "stored 1 new chunks" in pushed.stdout, pushed.stdout  # one tensor changed
    listed = stack.cli("models", "list").stdout
    assert f"{v2[:16]}" in listed and "draining" in listed
    if "node-eu" not in stack.procs:
        start_node(stack, tmp, "node-eu", TINY_MODEL)
    start_node(stack, tmp, "node-sa", TINY_MODEL)  # a new node gets the new version
    key = stack.new_key("ola", "100")
    stack.wait_for_model(key, TINY_MODEL, zones=2)
    _wait_for_log(tmp / "node-sa.log", "serving")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                           timeout=60)

    def served(zone: str) -> JobCompleted:
        reply = ask(client, zone)
        (done,) = completions_of(stack.nats_url, stack.data_dir, reply.headers["x-inferbus-job"])
        return done
    old, new = served("eu"), _eventually(lambda: served("sa"), ids["node-sa"])
    assert (old.node_id, old.model_root) == (ids["node-eu"], root)  # both versions serve
    assert new.model_root == v2
    removed = stack.cli("models", "remove", TINY_MODEL, "--root", root)
    assert root[:16] in removed.stdout, removed.stdout + removed.stderr
    time.sleep(3)  # the old root's nodes drop out of routing at their next heartbeat
    for _ in range(3):
        done = served("eu")
        assert (done.node_id, done.model_root) == (ids["node-sa"], v2)


def _eventually(call, node: str, tries: int = 5):
    """``call()`` until the job it returns ran on ``node`` (a zone's first job may go
    global while the node's first heartbeat is on its way)."""
    for _ in range(tries):
        done = call()
        if done.node_id == node:
            return done
        time.sleep(1)
    return done


async def test_a_granted_node_gets_plans_only_for_its_models_chunks(network):
    stack, ids, root, tmp, models_dir = network
    seed = stack.data_dir / "nats-auth" / "workers" / "node-eu.seed"
    nc, refusals = await connect_as(stack.nats_url, tmp / "node-eu", seed)

    async def ask(request: ModelAsk) -> ModelAnswer:
        reply = await nc.request(subjects.node_says(ids["node-eu"], subjects.NODE_MODEL),
                                 request.model_dump_json().encode(), timeout=10)
        return ModelAnswer.model_validate_json(reply.data)
    try:
        manifest = await ask(ModelAsk(op="manifest", name=TINY_MODEL))
        assert manifest.ok and manifest.manifest.root() == manifest.root
        stray = await ask(ModelAsk(op="fetch", name=TINY_MODEL, root=manifest.root,
                                   chunks=("ab" * 32,)))
        assert not stray.ok and f"are not {TINY_MODEL}'s" in stray.reason
        other = await ask(ModelAsk(op="fetch", name=TINY_MODEL, root="cd" * 32,
                                   chunks=tuple(manifest.manifest.chunk_set())))
        assert not other.ok and "is not a live root" in other.reason
        assert refusals.seen == []  # all within its permissions: the gate said no
    finally:
        await nc.close()


def test_bad_model_commands_are_one_line_errors(network):
    stack, ids, root, tmp, models_dir = network
    for args, says in ((("models", "remove", "nosuch"), "no model 'nosuch' is published"),
                       (("models", "push", str(tmp / "nowhere"), "--name", "x"),
                        "is not a model directory"),
                       (("models", "replicate", TINY_MODEL, "--regions", "mars"),
                        "no region 'mars'")):
        done = stack.cli(*args, check=False)
        assert done.returncode == 1, done
        assert done.stderr.strip().splitlines()[-1].startswith("inferbus models: ")
        assert says in done.stderr and "Traceback" not in done.stderr


def test_a_worker_asking_for_a_model_outside_its_grant_exits_with_one_line(network):
    stack, ids, root, tmp, models_dir = network
    proc = start_node(stack, tmp, "node-x", TINY_MODEL)
    assert proc.wait(timeout=60) == 1
    stack.procs.pop("node-x")
    last = (tmp / "node-x.log").read_text().strip().splitlines()[-1]
    assert last == (f"inferbus worker: model {TINY_MODEL}: this node's grant does not list "
                    f"model {TINY_MODEL}")
    assert not (tmp / "node-x" / "models" / "roots").exists()


def test_a_fetch_killed_midway_resumes_where_it_stopped(network):
    stack, ids, root, tmp, models_dir = network
    big = tmp / "big"
    shutil.copytree(models_dir / TINY_MODEL, big)
    # Ballast the loader never reads, so the fetch lasts long enough to be killed in.
    save_file({"ballast": torch.rand(96 << 20)}, big / "ballast.safetensors")
    big_root = build_manifest(big).root()
    stack.cli("models", "push", str(big), "--name", "big")
    proc = start_node(stack, tmp, "node-oc", "big")
    journal = tmp / "node-oc" / "models" / "roots" / f".partial-{big_root}" / ".journal"
    deadline = time.monotonic() + 90
    while not (journal.exists() and journal.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None, \
            (tmp / "node-oc.log").read_text()[-2000:]
        time.sleep(0.005)
    proc.kill()  # SIGKILL mid-fetch
    proc.wait(timeout=10)
    stack.procs.pop("node-oc")
    had = len(journal.read_text().split())
    assert not (tmp / "node-oc" / "models" / "roots" / big_root).exists()
    start_node(stack, tmp, "node-oc", "big")
    _wait_for_log(tmp / "node-oc.log", "serving", timeout=120)
    log = (tmp / "node-oc.log").read_text()
    resumed = [line for line in log.splitlines() if f"resuming {big_root[:16]}" in line]
    assert resumed and int(resumed[0].split(": ")[-1].split(" of ")[0]) >= had >= 1
    assert build_manifest(tmp / "node-oc" / "models" / "roots" / big_root).root() == big_root
