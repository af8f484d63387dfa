"""The event log as an AsyncAPI document: ``GET /asyncapi`` (JSON),
``GET /asyncapi.yaml`` and ``inferbus asyncapi``.

Generated from the code: faststream describes one publisher per event type
(every member of ``bus.events.AnyEvent``) on its log channel
(``bus.subjects.channels``) with the event's pydantic model as its payload,
and the job queue with ``JobSubmitted``. A new event type appears here as
soon as it joins ``AnyEvent``. The document is built once per process; the
broker only describes, it never connects.
"""
from __future__ import annotations

import json
import re
import typing
from functools import lru_cache

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from bus.events import AnyEvent, JobSubmitted
from bus.subjects.channels import JOB_QUEUE_ADDRESS, event_address

router = APIRouter()
TITLE = "inferbus event log"
DESCRIPTION = ("Every fact inferbus records is an immutable event on NATS JetStream, on "
               "`events.<zone>.<EventType>` (stream EVENTS; a job's outcome adds its "
               "billing slot, a ledger shard's money `s<shard>`). Jobs are queued on "
               "`jobs.<queue>.<model>`. Prompts and outputs are content, never events.")

PARAMETERS = {"zone": "the job's geo-zone, or global (accounts and money)",
              "key_hash": "the SHA-256 of the API key", "name": "the subcloud's name",
              "queue": "a zone, global, a node's own queue or a subcloud's pool",
              "model": "the model name",
              "slot": "j and the hex digit of the job's billing slot (its id's last digit): "
                      "each ledger shard's settlement reads its own"}


def event_types() -> tuple[type, ...]:
    """Every event model of the log, from the discriminated union ``AnyEvent``."""
    union = typing.get_args(AnyEvent)[0]
    return typing.get_args(union)


def _summary(model: type) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) or model.__name__


@lru_cache(maxsize=1)
def document() -> dict:
    """The AsyncAPI 3.0 document of the log (``asyncapi``, ``channels``,
    ``operations``, ``components.schemas``)."""
    from faststream.nats import NatsBroker
    from faststream.specification import AsyncAPI
    broker = NatsBroker("nats://localhost:4222")  # described, never connected
    for model in event_types():
        name = model.__name__
        broker.publisher(event_address(name), schema=model, title=name,
                         description=_summary(model))
    broker.publisher(JOB_QUEUE_ADDRESS, schema=JobSubmitted, title="JobQueue",
                     description="A job on its queue (work-queue stream JOBS): the workers "
                                 "of the queue's zone and model pull it; content included.")
    spec = AsyncAPI(broker, title=TITLE, version="1.0.0", description=DESCRIPTION,
                    schema_version="3.0.0").to_specification()
    doc = json.loads(spec.to_json())
    for channel in doc["channels"].values():  # AsyncAPI 3: every {name} is declared
        names = re.findall(r"{(\w+)}", channel["address"])
        if names:
            channel["parameters"] = {n: {"description": PARAMETERS.get(n, n)} for n in names}
    return doc


def yaml_text() -> str:
    import yaml
    return yaml.safe_dump(document(), sort_keys=False)


@router.get("/asyncapi")
async def asyncapi_json() -> JSONResponse:
    return JSONResponse(document())


@router.get("/asyncapi.yaml")
async def asyncapi_yaml() -> PlainTextResponse:
    return PlainTextResponse(yaml_text(), media_type="application/yaml")
