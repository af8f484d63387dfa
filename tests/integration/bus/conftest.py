"""A real supercluster on loopback for this folder's tests: regions eu, na and ap
of one server each, as ``cli/supercluster`` renders them; one per test module."""
from __future__ import annotations

import pytest

from tests.supercluster import Supercluster


@pytest.fixture(scope="module")
def sc(tmp_path_factory):
    cluster = Supercluster(tmp_path_factory.mktemp("supercluster"), ["eu", "na", "ap"])
    cluster.start()
    yield cluster
    cluster.stop()
