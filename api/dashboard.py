"""The account dashboard: ``GET /account``, one self-contained HTML page.

The page itself is public and holds no data: its script signs in with a key the
user types (or passes in the URL *fragment*, ``/account#key=ib-...``, which a
browser never sends to a server), keeps it in ``sessionStorage`` and calls the
API with ``Authorization: Bearer``, the same as any client. So the route needs
no session, cookie or CSRF token: a request without the header can do nothing.

The response forbids everything the page does not need (a Content-Security-
Policy that allows only this page's own inline script, by hash, and requests to
this origin), so an injected script or a framing site cannot reach the key or
click its buttons.
"""
from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).parent / "static" / "account.html"
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter()


@lru_cache(maxsize=4)
def _policy(html: str) -> str:
    """The page's Content-Security-Policy: its inline scripts allowed by their
    SHA-256, styles inline, requests only to this origin, no frames, no forms."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _SCRIPT.findall(html))
    return ("default-src 'none'; "
            f"script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


@router.get("/account", response_class=HTMLResponse, include_in_schema=False)
async def account_page() -> HTMLResponse:
    # Read per request, like /status: a small file, and edits show without a restart.
    html = PAGE.read_text(encoding="utf-8")
    return HTMLResponse(html, headers={
        "Cache-Control": "no-store",
        "Content-Security-Policy": _policy(html),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    })
