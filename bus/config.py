"""Settings shared by every process, read once by each composition root.

Nothing reads the environment on import: ``Settings()`` is built in ``main``
and passed down.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from nats.js.api import Placement
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus import regions
from bus.pricing import Pricing
from bus.regions import Layout
from bus.zones import COUNTRY_ZONE, is_zone

NATS_URL_FILE = "nats.url"
REGIONS_FILE = "regions"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERBUS_", extra="ignore")

    nats_url: str | None = None  # one server, or a cluster's servers comma-separated
    nats_nkey_seed: Path | None = None  # this process's nkey seed file, where auth is on
    database_url: str | None = None
    # Ledger shards (bus.partitions): each holds the money of the accounts of its slots,
    # in its own SQLite file or PostgreSQL schema, settled by its own consumer.
    ledger_partitions: int = Field(default=1, ge=1, le=16)
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".local/share/inferbus")
    geoip_db: Path | None = None
    # Regions of the supercluster (bus/regions.py: "eu=eu,me;na=na,sa" or "eu,na"),
    # unset for one region; and the region this process runs in (default: the home one).
    regions: str | None = None
    region: str | None = None
    content_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)  # prompts and outputs
    # Location checks (verifier/location.py): the system account user whose connection
    # lists show where each node connects from. Unset (or no geoip_db): no checks.
    nats_system_user: str | None = None
    nats_system_password: str | None = None
    location_max_km: float = Field(default=500.0, gt=0)  # declared coordinates vs the address
    location_max_rtt_ms: float = Field(default=150.0, gt=0)  # best round trip to its region
    location_check_every_s: float = Field(default=10.0, gt=0)
    zones_file: Path | None = None  # JSON {"CC": "zone"} over the built-in country table

    def zone_table(self) -> dict[str, str]:
        """The country -> zone table: the built-in one with the user's edits on top."""
        table = dict(COUNTRY_ZONE)
        if self.zones_file:
            try:
                edits = json.loads(self.zones_file.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"INFERBUS_ZONES_FILE {self.zones_file}: {exc}") from None
            bad = {cc: z for cc, z in edits.items() if not is_zone(z)}
            if bad:
                raise ValueError(f"INFERBUS_ZONES_FILE names unknown zones: {bad}")
            table.update({cc.upper(): z for cc, z in edits.items()})
        return table
    trusted_proxies: list[str] = ["127.0.0.0/8", "::1/128"]
    job_timeout_s: float = 300.0
    job_ack_wait_s: float = 10.0  # also the job lease: a silent worker's job moves on after it
    job_max_attempts: int = 3
    stream_replicas: int = 1  # 3 in production (compose.yaml)
    production: bool = False  # refuse to start on a bus that could lose acked writes
    nats_monitor_url: str | None = None  # every server's http monitor, comma-separated
    pricing: Pricing = Pricing()
    expiry_grace_s: float = 30.0  # past a job's deadline before its reservation is swept
    zone_wait_s: float = 2.0  # a zone job nobody in the zone started goes global after this
    node_wait_s: float = 1.0  # a job sent to a chosen node moves to the next one after this
    max_body_bytes: int = 1_048_576  # 413 above
    rate_per_minute: int = 600  # per key and API instance; 429 above
    max_jobs_in_flight: int = 64  # per key, unfinished jobs; 429 above
    # Per account, counted by the NATS server so it holds across every API instance
    # (api/account_rate.py); unset: rate_per_minute; 0: off.
    account_rate_per_minute: int | None = Field(default=None, ge=0)
    # Wrong keys from one client address before its keys are refused (429), per window.
    auth_failures_per_window: int = Field(default=20, ge=1)
    auth_failure_window_s: float = Field(default=60.0, gt=0)
    max_tokens_limit: int = 8192  # the most a request may ask for, whatever the model
    # Spot checks (verifier/): the share of completions re-checked (every one of a node
    # on probation); probes a new node passes before it is verified; failed checks
    # that suspend a verified node (one suspends a node on probation); strikes for
    # other refusals (forged, malformed, outside its grant) that suspend any node.
    spot_check_share: float = Field(default=0.02, ge=0.0, le=1.0)
    probation_checks: int = Field(default=3, ge=1)
    suspend_after_failures: int = Field(default=2, ge=1)
    suspend_after_strikes: int = Field(default=10, ge=1)
    # A worker runs up to max_batch jobs at once, decoded together one token per step
    # (continuous batching, workers/batching.py); a job joins the batch only while its
    # KV cache, at its worst case, stays within kv_budget_mb (a lone job always runs).
    max_batch: int = 32
    kv_budget_mb: int = 2048
    # The worker's model dtype; auto: bf16 (fp16) on CUDA, float32 on CPUs. On a CPU
    # with AVX512-BF16 or AMX, bfloat16 about doubles batched throughput
    # (bench/worker.py); on other CPUs it is much slower than float32.
    worker_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Models (bus.model_book): with this set, a model name nobody published is served
    # by no node; unset, such a local model (a directory a worker was pointed at) is
    # served by any root. Production deployments set it.
    published_models_only: bool = False
    # A draining version (replaced by a newer push) that no live node has served for
    # this long is retired by the gate (gate/model_drain.py).
    model_drain_s: float = Field(default=300.0, ge=0.0)
    # Webhooks (docs/webhooks.md): loopback and private receivers are refused unless
    # an operator allows them; the signing secret (else <data dir>/webhook.secret);
    # one attempt's timeout, the backoff's first and longest pause, how many tries
    # (the defaults retry for about a day) and how many deliveries run at once.
    webhook_allow_private: bool = False
    webhook_secret: str | None = None
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_retry_base_s: float = Field(default=1.0, gt=0)
    webhook_retry_max_s: float = Field(default=3600.0, gt=0)
    webhook_max_attempts: int = Field(default=36, ge=1, le=1000)
    webhook_concurrency: int = Field(default=64, ge=1, le=10_000)

    def layout(self) -> Layout:
        """``INFERBUS_REGIONS``, else the regions ``inferbus up --regions`` wrote down."""
        if self.regions is None and (path := self.data_dir / REGIONS_FILE).exists():
            return regions.parse(path.read_text().strip())
        return regions.parse(self.regions)

    def home_placement(self) -> Placement | None:
        """Where a bucket is made if missing: the home region (None with one region)."""
        layout = self.layout()
        return layout.placement(layout.home)

    def this_region(self) -> str:
        """The region this process serves: ``INFERBUS_REGION``, else the home one."""
        layout = self.layout()
        if self.region is None:
            return layout.home
        layout.zones(self.region)  # raises RegionError naming the known ones
        return self.region

    def resolved_nats_url(self) -> str:
        """``INFERBUS_NATS_URL``, else the embedded server ``inferbus up`` wrote down."""
        if self.nats_url:
            return self.nats_url
        path = self.data_dir / NATS_URL_FILE
        if path.exists():
            return path.read_text().strip()
        raise RuntimeError(
            f"no NATS server: set INFERBUS_NATS_URL or start `inferbus up` (no {path})")

    def sqlite_path(self, name: str) -> Path:
        return self.data_dir / f"{name}.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
