"""The account page is served self-contained, with a policy that runs only its own script."""
import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import dashboard


def page():
    app = FastAPI()
    app.include_router(dashboard.router)
    return TestClient(app).get("/account")


def test_account_page_policy_allows_exactly_the_pages_own_inline_script():
    r = page()
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    scripts = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    policy = dict(part.strip().split(" ", 1) for part in
                  r.headers["content-security-policy"].split(";"))
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'none'"


def test_account_page_loads_nothing_from_another_origin():
    html = page().text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "<script src" not in html and "@import" not in html


def test_account_page_key_inputs_are_never_submitted_as_form_fields():
    # An input without a name is never part of a submitted form: with scripts
    # off, a key typed in still cannot end up in a URL or a server log.
    html = page().text
    assert re.search(r'<input id="signin-key" type="password"', html)
    assert not re.search(r"<input[^>]*\bname=", html)
    assert "<form" in html and " action=" not in html
