"""A whole inferbus network over a loopback supercluster, for e2e tests: the
home region's projector, and per region a gate, a verifier, an API and an
echo worker in its first zone, each connected to its own region's servers."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from bus import regions
from tests.natsd import free_port
from tests.stack import Stack
from tests.supercluster import Supercluster
from workers.echo import write_echo_model


def start_regions(root: Path, models_dir: Path, spec: str, servers_per_region: int = 1,
                  env: dict[str, str] | None = None, served: tuple[str, ...] = ()) -> Stack:
    """A started network of the regions ``spec`` names (``INFERBUS_REGIONS``), home
    first; only the ``served`` ones (default all) get services and a worker, the
    others only servers. The stack's ``cluster`` is the supercluster, ``apis`` maps
    each served region to its API's URL (``base_url`` is the home region's); stop
    with :func:`stop_regions`."""
    layout = regions.parse(spec)
    served = served or layout.regions
    cluster = Supercluster(root / "nats", list(layout.regions), servers_per_region).start()
    shutil.copytree(models_dir, root / "models")
    write_echo_model(root / "models" / "echo")
    stack = Stack(root, cluster.url(layout.home), env_extra={
        "INFERBUS_REGIONS": spec, "INFERBUS_REGION": layout.home,
        "INFERBUS_SPOT_CHECK_SHARE": "0", **(env or {})})
    stack.cluster, stack.apis = cluster, {}
    try:
        stack.start("projector", "projector")
        for region in served:
            own = {"INFERBUS_NATS_URL": cluster.url(region), "INFERBUS_REGION": region}
            zone = layout.zones(region)[0]
            stack.start(f"gate-{region}", "gate", env=own)
            stack.start(f"verifier-{region}", "verifier", env=own)
            stack.start(f"worker-{zone}", "worker", "--zone", zone, "--model", "echo",
                        "--node-name", f"worker-{zone}", env=own)
            port = stack.port if region == layout.home else free_port()
            stack.start(f"api-{region}", "api", "--port", str(port), env=own)
            stack.apis[region] = f"http://127.0.0.1:{port}"
        stack.key = stack.new_key("alice", "100")
        stack.wait_for_model(stack.key, "echo", zones=len(served))
        for url in stack.apis.values():  # every API is up, not only the home one
            wait_for_api(url)
    except BaseException:
        stop_regions(stack)
        raise
    return stack


def strict_eu_key(stack: Stack, account: str = "eurocorp") -> str:
    """A key of a new strict subcloud pinned to zone eu (its data stays in eu's region)."""
    stack.cli("subclouds", "create", "eu-only", "--zones", "eu", "--strict")
    out = stack.cli("keys", "create", "--account", account, "--subcloud", "eu-only",
                    "--credits", "100")
    return out.stdout.strip().splitlines()[-1]


def wait_for_api(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no API answered at {url} within {timeout:.0f} s")


def stop_regions(stack: Stack) -> None:
    stack.stop()
    stack.cluster.stop()
