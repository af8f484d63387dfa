"""Which weights a model name means, as each process follows it live.

:class:`CatalogBook` follows the catalog (KV ``models``, ``bus.model_store``)
and answers the one routing question: may a node whose heartbeat reports
``root`` serve ``name``? Yes only when ``root`` is a serving or draining
version of a published ``name``. A name never published is a local model (a
directory a worker was pointed at, as in development and the tests' echo
models): with ``published_only`` (``INFERBUS_PUBLISHED_MODELS_ONLY``, set in
production deployments) it is served by nobody; otherwise by any root.

:class:`NodeRoots` follows the heartbeats (KV ``nodes``) for the gate: the
root each node reports per model. A node's report is its own word; it decides
only whether the node is *offered* jobs. What it really runs is checked by
the signature over its results (which names the root) and by spot checks
against that root's weights.
"""
from __future__ import annotations

from bus.kv_book import KVBook
from bus.model_store import CatalogEntry
from bus.node_record import NodeRecord


class CatalogBook(KVBook):
    def __init__(self, published_only: bool = False) -> None:
        super().__init__()
        self.published_only = published_only
        self.entries: dict[str, CatalogEntry] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = CatalogEntry.model_validate_json(value)

    def accepted(self, name: str) -> frozenset[str] | None:
        """The roots routed for ``name``; None when it was never published."""
        entry = self.entries.get(name)
        return None if entry is None else entry.accepted()

    def refusal(self, name: str, root: str | None) -> str | None:
        """Why a node reporting ``root`` for ``name`` gets no ``name`` jobs; None: it may."""
        accepted = self.accepted(name)
        if accepted is None:
            return f"model {name} is not published" if self.published_only else None
        if root in accepted:
            return None
        if not accepted:
            return f"model {name} is retired"
        return (f"this node's root {(root or 'none')[:16]}… for {name} is not a published one "
                f"({', '.join(r[:16] + '…' for r in sorted(accepted))})")


class NodeRoots(KVBook):
    def __init__(self) -> None:
        super().__init__()
        self.roots: dict[str, dict[str, str | None]] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.roots.pop(key, None)
            return
        record = NodeRecord.model_validate_json(value)
        if record.node_id == key:  # a node's user may put only its own key
            self.roots[key] = {m.name: m.root for m in record.models}

    def root(self, node_id: str, model: str) -> str | None:
        return self.roots.get(node_id, {}).get(model)
