"""The event log's AsyncAPI document, generated from the event contracts."""
from __future__ import annotations

import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import asyncapi
from bus.events import CreditsDebited, JobCompleted, JobSubmitted


def test_the_document_lists_the_logs_channels_with_their_schemas():
    doc = asyncapi.document()
    assert doc["asyncapi"].startswith("3.")
    channels, schemas = doc["channels"], doc["components"]["schemas"]
    for event in (JobSubmitted, JobCompleted, CreditsDebited):
        name = event.__name__
        assert channels[name]["address"].startswith("events.")
        assert name in channels[name]["address"].split(".")
        assert set(event.model_fields) <= set(schemas[name]["properties"])
    assert channels["ApiKeyIssued"]["address"] == "events.global.ApiKeyIssued.{key_hash}"
    assert channels["JobCompleted"]["address"] == "events.{zone}.JobCompleted.{slot}"
    assert channels["JobSubmitted"]["address"] == "events.{zone}.JobSubmitted.{slot}"


def test_every_event_type_and_parameter_is_declared():
    doc = asyncapi.document()
    assert {m.__name__ for m in asyncapi.event_types()} <= set(doc["channels"])
    for channel in doc["channels"].values():
        for name in channel.get("parameters", {}):
            assert "{" + name + "}" in channel["address"]
        assert "{" not in channel["address"] or channel.get("parameters")
    for operation in doc["operations"].values():  # every reference resolves
        ref = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert ref in doc["channels"]


def test_the_api_serves_it_as_json_and_yaml():
    app = FastAPI()
    app.include_router(asyncapi.router)
    client = TestClient(app)
    as_json = client.get("/asyncapi")
    assert as_json.status_code == 200 and as_json.json()["asyncapi"].startswith("3.")
    as_yaml = client.get("/asyncapi.yaml")
    assert as_yaml.status_code == 200 and yaml.safe_load(as_yaml.text) == as_json.json()
