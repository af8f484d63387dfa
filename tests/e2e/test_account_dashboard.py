"""The account dashboard (``/account``) in headless Chromium, on a real stack.

One echo worker serves a few jobs for an account with a deposit; then a browser
signs in with the account's key (passed in the URL fragment, which never
reaches the server) and the tests read what the page shows against what the
API says, and click through creating and revoking a key.
"""
from __future__ import annotations

import time

import httpx
import pytest

from tests.chromium import CHROMIUM, Browser, Page
from tests.stack import isolated_stack
from workers.echo import write_echo_model

JOBS = 3
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: install the Debian package 'chromium'")


@pytest.fixture(scope="module")
def dash_stack(models_dir, tmp_path_factory):
    with isolated_stack(tmp_path_factory.mktemp("dashboard"), models_dir) as s:
        write_echo_model(s.data_dir / "models" / "echo")
        s.start_worker("eu", "echo", "worker-eu")
        s.start_api()
        s.key = s.new_key("dasher", credits="100")
        s.wait_for_model(s.key, "echo")
        for i in range(JOBS):
            r = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=30,
                           headers=bearer(s.key),
                           json={"model": "echo", "max_tokens": 3,
                                 "messages": [{"role": "user", "content": f"job {i} hi there"}]})
            assert r.status_code == 200, r.text
        yield s


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def settled(s, key: str, timeout: float = 30.0) -> dict:
    """``/v1/account`` once nothing is held and every job is listed (settlement
    and the read models run a few milliseconds behind the answers)."""
    deadline = time.monotonic() + timeout
    while True:
        account = httpx.get(f"{s.base_url}/v1/account", headers=bearer(key), timeout=10).json()
        jobs = httpx.get(f"{s.base_url}/v1/jobs?limit=20", headers=bearer(key), timeout=10)
        done = jobs.status_code != 200 or sum(
            j["status"] == "completed" for j in jobs.json()["data"]) >= JOBS
        if (account["held"] == 0 and done) or time.monotonic() > deadline:
            return account
        time.sleep(0.2)


@pytest.fixture
def browser(tmp_path):
    with Browser(tmp_path / "profile") as b:
        yield b


def signed_in(browser: Browser, s, key: str) -> Page:
    page = browser.page(f"{s.base_url}/account#key={key}")
    page.wait_for("document.body && document.body.dataset.loaded")
    return page


def test_account_page_pins_its_script_and_refuses_framing(dash_stack):
    r = httpx.get(f"{dash_stack.base_url}/account", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_signing_in_shows_the_balance_spend_and_jobs_the_api_reports(dash_stack, browser):
    s = dash_stack
    account = settled(s, s.key)
    page = signed_in(browser, s, s.key)
    # The key left the address bar at once and was never part of a request's URL.
    assert page.js("location.href") == f"{s.base_url}/account"
    assert not [u for u in page.requested_urls() if s.key in u]
    assert s.key not in s.log("api")
    assert page.js("document.getElementById('error').textContent") == ""
    assert page.js("document.getElementById('account-name').textContent") == "dasher"
    shown = page.js("Object.fromEntries(['balance','held','spent','rcp'].map("
                    "k => [k, Number(document.getElementById(k).dataset.value)]))")
    assert shown == {k: account[k] for k in ("balance", "held", "spent", "rcp")}
    assert account["spent"] > 0 and account["balance"] == pytest.approx(100 - account["spent"])

    # Spend over time: today's jobs draw (at least) today's bar.
    assert page.js("document.querySelectorAll('#chart svg rect.bar').length") >= 1, \
        page.js("document.getElementById('usage').innerText")
    # Recent jobs: the rows are the jobs the API lists for this account.
    listed = httpx.get(f"{s.base_url}/v1/jobs?limit=20", headers=bearer(s.key), timeout=10)
    assert listed.status_code == 200, listed.text
    rows = page.js("[...document.querySelectorAll('#jobs-table tbody tr')].map("
                   "tr => [tr.dataset.jobId, tr.querySelector('.status').textContent])")
    assert rows == [[j["id"], j["status"]] for j in listed.json()["data"]]
    assert sum(status == "completed" for _, status in rows) >= JOBS

    # Filtered by status, by the API (GET /v1/jobs?status=).
    jobs_shown = "document.querySelectorAll('#jobs-table tbody tr').length"
    page.js("(() => { const select = document.getElementById('jobs-status');"
            "select.value = 'failed'; select.dispatchEvent(new Event('change')); })()")
    page.wait_for(f"{jobs_shown} === 0 && document.getElementById('jobs-empty').textContent")
    assert page.js("document.getElementById('jobs-empty').textContent") == "No failed jobs."


def test_a_key_created_on_the_page_is_shown_once_and_once_revoked_is_refused(dash_stack, browser):
    s = dash_stack
    page = signed_in(browser, s, s.key)
    page.js("""(() => {
        document.getElementById('key-name').value = 'from the dashboard';
        document.getElementById('key-limit').value = '5';
        document.getElementById('key-expiry').value = '7';
        document.querySelector('#key-form button[type=submit]').click(); })()""")
    new_key = page.wait_for("document.getElementById('new-key').textContent", timeout=10)
    assert new_key.startswith("ib-"), page.js("document.getElementById('error').textContent")
    me = httpx.get(f"{s.base_url}/v1/account", headers=bearer(new_key), timeout=10)
    assert me.status_code == 200 and me.json()["account"] == "dasher"

    made = [k for k in httpx.get(f"{s.base_url}/v1/keys", headers=bearer(s.key),
                                 timeout=10).json()["data"] if k["name"] == "from the dashboard"]
    assert len(made) == 1 and made[0]["spend_limit"] == 5 and made[0]["expires_at"]
    key_id = made[0]["id"]
    row = f"document.querySelector('#keys-table tr[data-key-id=\"{key_id}\"]')"
    page.wait_for(f"{row} && {row}.dataset.revoked === 'false'")
    # Shown once: dismissed, it is gone from the page, and a reload does not bring it back.
    page.js("document.getElementById('hide-key').click()")
    assert new_key not in page.js("document.documentElement.outerHTML")
    page.js("window.beforeReload = true; location.reload()")
    page.wait_for(f"!window.beforeReload && document.body && document.body.dataset.loaded && {row}")
    assert new_key not in page.js("document.documentElement.outerHTML")

    # Revoke takes two clicks: the first only arms the button.
    page.js(f"{row}.querySelector('button[data-revoke]').click()")
    assert page.js(f"{row}.dataset.revoked") == "false"
    page.js(f"{row}.querySelector('button[data-revoke]').click()")
    page.wait_for(f"{row} && {row}.dataset.revoked === 'true'", timeout=10)
    assert page.js(f"{row}.querySelector('.status').textContent") == "revoked"
    refused = httpx.get(f"{s.base_url}/v1/account", headers=bearer(new_key), timeout=10)
    assert refused.status_code == 401, refused.text
    # The signed-in key is untouched.
    assert httpx.get(f"{s.base_url}/v1/account", headers=bearer(s.key), timeout=10).status_code == 200


def test_a_key_that_is_not_admin_sees_its_account_but_not_the_key_manager(dash_stack, browser):
    s = dash_stack
    made = httpx.post(f"{s.base_url}/v1/keys", headers=bearer(s.key), timeout=10,
                      json={"name": "plain", "admin": False})
    assert made.status_code == 200, made.text
    page = signed_in(browser, s, made.json()["key"])
    assert page.js("document.getElementById('error').textContent") == ""
    assert page.js("document.getElementById('account-name').textContent") == "dasher"
    assert page.js("document.getElementById('keys-empty').textContent") == \
        "Managing keys needs an admin key of this account."
    assert page.js("[document.getElementById('key-form').hidden, "
                   "document.getElementById('keys-table').hidden]") == [True, True]
    assert page.js("document.querySelectorAll('#jobs-table tbody tr').length") >= JOBS


def test_a_wrong_key_is_refused_with_the_apis_message_and_nothing_is_shown(dash_stack, browser):
    page = browser.page(f"{dash_stack.base_url}/account")
    page.wait_for("document.body && document.body.dataset.loaded")
    assert page.js("document.getElementById('dashboard').hidden") is True
    page.js("""(() => { document.getElementById('signin-key').value = 'ib-not-a-real-key';
        document.querySelector('#signin-form button').click(); })()""")
    page.wait_for("document.getElementById('error').textContent")
    assert page.js("document.getElementById('error').textContent") == "Incorrect API key provided."
    assert page.js("document.getElementById('dashboard').hidden") is True
    assert page.js("sessionStorage.length") == 0


def test_referrals_and_plan_are_shown_on_both_sides_of_a_referral(dash_stack, browser):
    s = dash_stack
    code = httpx.get(f"{s.base_url}/v1/referrals", headers=bearer(s.key), timeout=10).json()["code"]
    s.cli("accounts", "create", "dash-friend", "--referral", code)
    friend = s.new_key("dash-friend", credits="10")
    s.cli("plans", "create", "dash-monthly", "--credits", "10", "--period-days", "30")
    s.cli("subscriptions", "start", "dasher", "dash-monthly")

    page = signed_in(browser, s, s.key)
    assert page.js("document.getElementById('referral-code').textContent") == code
    # The referred accounts come from the read model, a moment behind the ledger.
    referred = "[...document.querySelectorAll('#referred-table tbody td:first-child')]" \
               ".map(td => td.textContent)"
    deadline = time.monotonic() + 20
    while not page.js(f"{referred}.length") and time.monotonic() < deadline:
        page.js("document.getElementById('refresh').click()")
        time.sleep(0.5)
    assert page.js(referred) == ["dash-friend"]
    assert page.js("document.getElementById('subscription').hidden") is False
    plan = page.js("['plan','plan-credits','plan-period','plan-status'].map("
                   "id => document.getElementById(id).textContent)")
    assert plan == ["dash-monthly", "10", "30 days", "active"]

    theirs = signed_in(browser, s, friend)
    assert theirs.js("document.getElementById('account-name').textContent") == "dash-friend"
    assert theirs.js("document.getElementById('referred-by').textContent") == "dasher"
    # No plan: the API answers 404, and the section is not shown.
    assert httpx.get(f"{s.base_url}/v1/subscription", headers=bearer(friend),
                     timeout=10).status_code == 404
    assert theirs.js("document.getElementById('subscription').hidden") is True
