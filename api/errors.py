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


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request.", "invalid_json")
    where = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return APIError(400, f"{where}: {message}" if where else message, "invalid_request", where)


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
