"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

import json
import logging

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from bus.events import JobCancelled, JobExpired, JobFailed

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
          403: "permission_error",
          404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          409: "invalid_request_error", 429: "rate_limit_exceeded", 503: "service_unavailable", 504: "timeout"}


# The ledger's or the read models' database cannot be reached (down, restarting,
# no connection free in time): the request may be retried, so a 503, never a
# 500. psycopg_pool's PoolTimeout is a psycopg.OperationalError; eventsourcing
# wraps psycopg's errors (and SQLite's "database is locked") in its own.
DATABASE_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, OperationalError,
                        InterfaceError)
RETRY_AFTER_S = 2
# A node's failure code that is the caller's doing, not the network's.
_FAILURE_STATUS = {"context_length_exceeded": 400}
log = logging.getLogger("inferbus.api")


class APIError(Exception):
    """Raised anywhere in the API to answer with an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def outcome_error(event: JobFailed | JobExpired | JobCancelled) -> APIError:
    """The error a caller waiting for a job gets when it ended without a result."""
    if isinstance(event, JobExpired):
        return APIError(504, "the job passed its deadline before a node ran it", "deadline")
    if isinstance(event, JobCancelled):  # DELETE /v1/jobs/{id} while a caller waited
        return APIError(409, "the job was cancelled before it finished", "cancelled")
    return APIError(_FAILURE_STATUS.get(event.code, 500), event.message, event.code)


# Pydantic names the union member an error came from in its path ("str",
# "list[TextPart]", "function-after[...]", a model's class name): not the request's.
_PRIMITIVES = {"str", "int", "float", "bool", "list", "dict", "none", "tuple"}
# What a field that takes several shapes must be, said once instead of per shape.
_SHAPES = {"stop": "must be a string or a list of at most 4 strings",
           "content": "must be a string or a list of text parts",
           "tool_choice": 'must be "none", "auto", "required" or '
                          '{"type": "function", "function": {"name": ...}}',
           "prompt": "must be a string"}


def _request_path(loc) -> list:
    return [p for p in loc if p != "body" and not (isinstance(p, str) and (
        "[" in p or "-" in p or p[:1].isupper() or p in _PRIMITIVES))]


def _spelled(path: list) -> str:
    """``["messages", 1, "content"]`` as ``messages[1].content``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a request body, spoken of as the request's fields."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    kind, ctx = first.get("type"), first.get("ctx") or {}
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request.", "invalid_json")
    path = _request_path(first.get("loc", ()))
    if kind in ("invalid_parameter", "unsupported_parameter"):
        code = "unsupported_parameter" if kind == "unsupported_parameter" else "invalid_request"
        return APIError(400, f"{ctx['param']}: {ctx['message']}", code, ctx["param"])
    if not path:
        return APIError(400, "the request body must be a JSON object", "invalid_request")
    param = str(path[0])
    if kind == "extra_forbidden" and len(path) == 1:
        return APIError(400, f"Unrecognized request argument supplied: {param}",
                        "unknown_parameter", param)
    if "part" in ctx:
        path = [*path, ctx["part"]]
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a field of this object"
    elif sum(_request_path(e.get("loc", ())) == path for e in errors) > 1 \
            or str(kind).endswith("_type"):
        message = _SHAPES.get(next((p for p in reversed(path) if isinstance(p, str)), ""),
                              "has the wrong type" if kind == "union" else message)
    return APIError(400, f"{_spelled(path)}: {message}", "invalid_request", param)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code).response()

    for exc_type in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_type, _database_unavailable)

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_: Request, exc: json.JSONDecodeError):
        return APIError(400, f"invalid JSON: {exc}", "invalid_json").response()


async def _database_unavailable(request: Request, exc: Exception):
    # One line, no traceback: an outage is an operational state, not a bug.
    log.warning("%s %s: database unavailable (%s: %s)", request.method, request.url.path,
                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    # A failure before a reservation commits reserves nothing; one cut off
    # while its commit was answered is refunded by the expiry sweep.
    return APIError(503, "the credit ledger or job database is unavailable; retry shortly",
                    "database_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)}
                    ).response()
