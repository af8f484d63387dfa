"""``inferbus``: argument parsing and dispatch to each part's composition root.

Every command builds ``Settings()`` from the environment once, here. Errors
end as one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bus.config import Settings
from cli import account_commands, audit_command, key_commands, services


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inferbus", description="decentralized LLM inference")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="the whole network on this machine")
    up.add_argument("--model", default=None, help="model the workers serve (default SmolLM2)")
    up.add_argument("--embeddings", default="all-minilm-l6-v2",
                    help="the embeddings model one more worker serves ('none': no such worker)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--regions", help="a supercluster: one NATS server, API and verifier per "
                    "region, e.g. eu,na,ap (see INFERBUS_REGIONS)")
    api = sub.add_parser("api", help="the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    w = sub.add_parser("worker", help="a worker serving one model in one zone")
    w.add_argument("--zone", required=True)
    w.add_argument("--model", required=True, help="a pulled model's name or a model dir")
    w.add_argument("--operator", default="operator", help="account that earns the RCP")
    w.add_argument("--tier", type=int, default=1, choices=range(1, 7))
    w.add_argument("--lat", type=float)
    w.add_argument("--lon", type=float)
    w.add_argument("--node-name", help="node identity (key file) name; default ZONE-MODEL")
    w.add_argument("--subcloud", help="serve this subcloud's private pool")
    w.add_argument("--public", action="store_true",
                   help="with --subcloud: serve public zone and global jobs too")
    projector = sub.add_parser("projector", help="the read models and the money service")
    projector.add_argument(
        "--no-settle", action="store_true",
        help="run the read models only: `inferbus settle` processes run the money service")
    projector.add_argument(
        "--partition", type=int, action="append", metavar="K",
        help="a partition to serve, 0 to INFERBUS_LEDGER_PARTITIONS-1: its read models and "
             "its ledger shard (repeatable; default: every one)")
    sub.add_parser("settle", help="the money service alone (settlement, ledger relay, expiry "
                   "sweep, renewals), for one ledger shard or all").add_argument(
        "--shard", type=int, action="append", metavar="K",
        help="a ledger shard to serve, 0 to INFERBUS_LEDGER_PARTITIONS-1 (repeatable; "
             "default: every one)")
    sub.add_parser("gate", help="the trust boundary: checks what nodes say (leases, outcomes)")
    sub.add_parser("verifier", help="spot checks: re-checks sampled results, probes new nodes")
    sub.add_parser("webhooks", help="deliver async jobs' outcomes to their webhooks")
    sub.add_parser("asyncapi", help="print the event log's AsyncAPI document").add_argument(
        "--yaml", action="store_true", help="YAML instead of JSON")
    key_commands.add_parser(sub)
    cr = sub.add_parser("credits", help="account credits").add_subparsers(dest="credits_cmd",
                                                                          required=True)
    dep = cr.add_parser("deposit", help="add credits to an account")
    dep.add_argument("--account", required=True)
    dep.add_argument("amount", help="credits, e.g. 25 or 0.5")
    audit_command.add_parser(sub)
    acc = sub.add_parser("accounts", help="consumer accounts").add_subparsers(
        dest="accounts_cmd", required=True)
    acc.add_parser("forget", help="erase an account's prompts and results in every region"
                   ).add_argument("account")
    account_commands.add_parsers(sub, acc)
    sc = sub.add_parser("subclouds", help="groups of zones keys can be bound to")
    scc = sc.add_subparsers(dest="subclouds_cmd", required=True).add_parser(
        "create", help="create a subcloud")
    scc.add_argument("name")
    scc.add_argument("--zones", required=True, help="comma-separated, e.g. eu or eu,me")
    scc.add_argument("--strict", action="store_true",
                     help="residency: its jobs never leave these zones")
    models = sub.add_parser("models", help="the network's models, and local ones"
                            ).add_subparsers(dest="models_cmd", required=True)
    models.add_parser("pull", help="download and convert a catalog model into the data dir"
                      ).add_argument("name")
    mp = models.add_parser("push", help="publish a model directory to the network by its root")
    mp.add_argument("dir")
    mp.add_argument("--name", required=True, help="the model name it is served as")
    mp.add_argument("--regions", help="also replicate to these regions (comma-separated)")
    models.add_parser("list", help="published models (root, size, state, regions) and local ones")
    mr = models.add_parser("replicate", help="copy a published model into more regions")
    mr.add_argument("name")
    mr.add_argument("--regions", required=True, help="comma-separated")
    mr.add_argument("--root", help="a version other than the serving one")
    mx = models.add_parser("remove", help="retire a model (or one version) and collect its chunks")
    mx.add_argument("name")
    mx.add_argument("--root", help="retire only this version")
    mx.add_argument("--grace", type=float, default=3600.0,
                    help="seconds: chunks stored more recently stay (a push may be using them)")
    sub.add_parser("status", help="live nodes")
    nodes = sub.add_parser("nodes", help="node grants").add_subparsers(
        dest="nodes_cmd", required=True)
    na = nodes.add_parser("add", help="grant a node its own NATS user; prints its seed file")
    na.add_argument("--zone", required=True)
    na.add_argument("--model", required=True, help="the model name the worker serves")
    na.add_argument("--operator", default="operator", help="the account that earns its RCP")
    na.add_argument("--tier", type=int, default=1, choices=range(1, 7))
    na.add_argument("--node-name", help="the worker's --node-name; default ZONE-MODEL")
    na.add_argument("--node-id", help="the node's public id (hex) when its key lives elsewhere")
    na.add_argument("--subcloud", help="the worker's --subcloud")
    na.add_argument("--public", action="store_true", help="the worker's --public")
    na.add_argument("--verified", action="store_true",
                    help="vouch for the node: no probation (your own hardware)")
    nodes.add_parser("list", help="every granted node and its status")
    for verb, what in (("suspend", "take a node out: no jobs, no NATS user"),
                       ("remove", "forget a node's grant and NATS user")):
        nodes.add_parser(verb, help=what).add_argument("node", help="node name or id (prefix)")
    dr = sub.add_parser("deploy", help="deployment files").add_subparsers(
        dest="deploy_cmd", required=True).add_parser("render", help="NATS supercluster configs")
    dr.add_argument("--regions", required=True, help="comma-separated, e.g. eu,na,ap")
    dr.add_argument("--servers", type=int, default=3, help="NATS servers per region")
    dr.add_argument("--out", required=True, help="folder for nats-<region>-<i>.conf")
    return p


def _run_until_signal(main) -> int:
    """Run ``main(stop)`` until SIGINT/SIGTERM sets ``stop``."""
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)
    # uvloop (when installed, as the project's dependencies ask) runs the same
    # asyncio code with about half the per-message cost; uvicorn picks it itself.
    try:
        import uvloop
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop is not None else asyncio.run)(runner())
    return 0


def _dispatch(args, settings: Settings) -> int:
    if args.command == "up":
        from cli import up
        from workers.models import DEFAULT_MODEL
        if args.regions:
            settings = settings.model_copy(update={"regions": args.regions})
            settings.layout()  # a bad --regions is one line, before anything starts
        return up.run(settings, args.model or DEFAULT_MODEL, args.host, args.port,
                      args.embeddings)
    if args.command == "api":
        from api.app import serve
        serve(settings, args.host, args.port)
        return 0
    if args.command == "worker":
        from workers.node import WorkerOptions, run
        opts = WorkerOptions(args.zone, args.model, args.operator, args.tier, args.lat, args.lon,
                             args.node_name, args.subcloud, not args.subcloud or args.public)
        return _run_until_signal(lambda stop: run(settings, opts, stop, sys.stderr.isatty()))
    if args.command in ("projector", "settle"):
        flag, chosen = ("--partition", args.partition) if args.command == "projector" else \
            ("--shard", args.shard)
        n = settings.ledger_partitions
        if any(not 0 <= k < n for k in chosen or ()):
            print(f"inferbus {args.command}: {flag} is 0 to {n - 1} "
                  f"(INFERBUS_LEDGER_PARTITIONS={n})", file=sys.stderr)
            return 2
        shards = sorted(set(chosen)) if chosen else None
        if args.command == "settle":
            return _run_until_signal(lambda stop: services.projector(
                settings, stop, read_models=False, shards=shards))
        return _run_until_signal(lambda stop: services.projector(
            settings, stop, money=not args.no_settle, shards=shards))
    if args.command == "gate":
        return _run_until_signal(lambda stop: services.gate(settings, stop))
    if args.command == "verifier":
        return _run_until_signal(lambda stop: services.verifier(settings, stop))
    if args.command == "webhooks":
        from api import webhook_service
        return _run_until_signal(lambda stop: webhook_service.serve(settings, stop))
    if args.command == "asyncapi":
        import json
        from api import asyncapi
        print(asyncapi.yaml_text() if args.yaml else json.dumps(asyncapi.document(), indent=2))
        return 0
    if args.command == "keys":
        return key_commands.dispatch(args, settings)
    if args.command == "credits":
        from bus.credits import credits
        from cli import admin
        view = admin.deposit(settings, args.account, admin.parse_credits(args.amount))
        print(f"{args.account}: balance {float(credits(view.balance))} credits")
        return 0
    if args.command == "subclouds":
        from cli import admin
        zones = [z.strip().lower() for z in args.zones.split(",") if z.strip()]
        layout = settings.layout()
        if args.strict and len({layout.region_of(z) for z in zones}) > 1:
            raise ValueError(f"a strict subcloud's zones must lie in one region; "
                             f"{', '.join(zones)} span {', '.join(layout.regions)}")
        made = admin.run(admin.create_subcloud(settings, args.name, zones, args.strict))
        print(f"subcloud {made.name}: zones {', '.join(made.zones)}"
              f"{' (strict residency)' if made.strict else ''}")
        return 0
    if account_commands.handles(args):
        return account_commands.dispatch(args, settings)
    if args.command == "accounts":
        from cli import admin
        jobs, erased = admin.run(admin.forget_account(settings, args.account))
        print(f"account {args.account}: content of {erased} of its {jobs} jobs erased in "
              f"every region; the log keeps their hashes, usage and cost")
        return 0
    if args.command == "audit":
        return audit_command.dispatch(args, settings)
    if args.command == "models":
        return _models(args, settings)
    if args.command == "status":
        from cli import admin, status_table
        print(status_table.render_status(admin.run(status_table.gather(settings))))
        return 0
    if args.command == "nodes":
        from cli import node_grants
        if args.nodes_cmd == "add":
            print(node_grants.describe(node_grants.add(
                settings, args.zone, args.model, args.node_name, args.subcloud, args.public,
                args.node_id, args.operator, args.tier, args.verified)))
        elif args.nodes_cmd == "list":
            print(node_grants.table(settings))
        else:
            done = getattr(node_grants, args.nodes_cmd)(settings, args.node)
            print(f"node {done.node_name} ({done.node_id[:16]}) "
                  f"{'suspended' if args.nodes_cmd == 'suspend' else 'removed'}")
        return 0
    if args.command == "deploy":
        from cli import supercluster
        return supercluster.command(args.regions, args.servers, args.out)
    raise AssertionError(args.command)


def _models(args, settings: Settings) -> int:
    from cli import admin
    from cli import model_admin as network
    from workers import models
    if args.models_cmd == "pull":
        print(models.pull(args.name, settings.models_dir))
    elif args.models_cmd == "push":
        print(admin.run(network.push(settings, args.dir, args.name, args.regions)).render())
    elif args.models_cmd == "replicate":
        print(admin.run(network.replicate_to(settings, args.name, args.regions, args.root)))
    elif args.models_cmd == "remove":
        print(admin.run(network.remove(settings, args.name, args.root, args.grace)))
    else:
        try:
            print(network.table(admin.run(network.listing(settings))))
        except RuntimeError as exc:  # no network running: the local models still count
            print(f"published models: unknown ({exc})")
        local = models.list_local(settings.models_dir)
        print("\nlocal model directories:" if local else "")
        for m in local:
            print(f"{m.name:32} {m.size_bytes / 2**20:8.1f} MiB  ctx {m.context_length}  {m.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _dispatch(args, Settings())
    except (RuntimeError, ValueError, LookupError, OSError) as exc:  # LookupError: KeyError too
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"inferbus {args.command}: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
