"""One running stack (API, projector, workers in eu and na) for the e2e tests."""
import shutil

import pytest

from tests.conftest import LONG_MODEL, TINY_MODEL
from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(nats_server, models_dir, geoip_db, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    shutil.copytree(models_dir, data_dir / "models")
    s = Stack(data_dir, nats_server.url, env_extra={
        "INFERBUS_GEOIP_DB": str(geoip_db), "INFERBUS_JOB_ACK_WAIT_S": "3",
        "INFERBUS_TRUSTED_PROXIES": '["127.0.0.0/8"]'})
    s.start_projector()
    s.start_worker("eu", TINY_MODEL)
    s.start_worker("na", TINY_MODEL)
    s.start_worker("eu", LONG_MODEL, "worker-eu-long")
    s.start_api()
    try:
        s.key = s.new_key("alice")
        s.wait_for_model(s.key, TINY_MODEL, zones=2)
        s.wait_for_model(s.key, LONG_MODEL)
        yield s
    finally:
        s.stop()


@pytest.fixture
def key(stack) -> str:
    return stack.key
