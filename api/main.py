"""``inferbus api``: serve the HTTP API with uvicorn."""
from __future__ import annotations

import asyncio

import uvicorn

from api.app import create_app
from bus.config import Settings
from bus.guard import preflight


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    asyncio.run(preflight(settings))  # a production refusal as one line, before uvicorn
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                proxy_headers=False)  # X-Forwarded-For is judged by api.zones, not uvicorn
