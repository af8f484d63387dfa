"""Referrals and subscriptions through the running stack: an account signed up
with a referral code earns its referrer RCP on its paid jobs, both accounts see
it on /v1/referrals; a subscription grants credits each period until it is
cancelled and lapses; ``inferbus audit`` replays all of it."""
import time

import httpx

from tests.conftest import TINY_MODEL
from tests.e2e.test_credits import api, settled

CHAT = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
RATE = 50  # RCP per credit a referred account pays (bus.pricing defaults: 10% x 500)


def until(read, check, timeout: float = 20.0):
    """``read()`` once ``check`` holds of it."""
    deadline = time.monotonic() + timeout
    while not check(value := read()):
        assert time.monotonic() < deadline, value
        time.sleep(0.1)
    return value


def test_a_referred_accounts_paid_job_earns_its_referrer_rcp_seen_by_both(stack):
    with api(stack, stack.new_key("rita", credits="1")) as rita:
        code = rita.get("/v1/referrals").json()["code"]
        made = stack.cli("accounts", "create", "ralph", "--referral", code)
        assert "referred by rita" in made.stdout
        refused = stack.cli("accounts", "create", "ralph", "--referral", code, check=False)
        assert refused.returncode == 1 and "exists already" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        with api(stack, stack.new_key("ralph", credits="10")) as ralph:
            mine = ralph.get("/v1/referrals").json()
            assert (mine["referred_by"], mine["referred"]) == ("rita", [])
            own = stack.cli("accounts", "create", "rosa", "--referral",
                            mine["code"], check=False)  # a second level is fine
            assert own.returncode == 0, own.stderr
            unknown = stack.cli("accounts", "create", "ruth", "--referral", "nonsense",
                                check=False)
            assert unknown.returncode == 1 and "unknown referral code" in unknown.stderr
            assert ralph.post("/v1/chat/completions", json=CHAT).status_code == 200
            spent = settled(ralph)["spent"]
        share = round(spent * 1_000_000) * RATE // 1_000_000  # integer points, as the ledger
        assert share > 0
        seen = until(lambda: rita.get("/v1/referrals").json(),
                     lambda body: body["rcp_earned"] > 0)
        assert seen["rcp_earned"] == share and seen["referred_by"] is None
        assert [(r["account"], r["rcp_earned"]) for r in seen["referred"]] == [("ralph", share)]
        assert seen["referred"][0]["joined_at"]
        assert rita.get("/v1/account").json()["rcp"] == share


def test_a_subscription_renews_each_period_until_cancelled_then_lapses(stack):
    period_days = str(3 / 86400)  # three seconds
    stack.cli("plans", "create", "e2e-pro", "--credits", "5", "--period-days", period_days)
    for bad in (("plans", "create", "e2e-pro", "--credits", "5", "--period-days", "1"),
                ("plans", "create", "e2e-free", "--credits", "0", "--period-days", "1"),
                ("plans", "create", "e2e-fast", "--credits", "1", "--period-days", "0"),
                ("subscriptions", "start", "sam", "no-such-plan"),
                ("subscriptions", "cancel", "nobody")):
        out = stack.cli(*bad, check=False)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    with api(stack, stack.new_key("sam", credits="1")) as sam:
        assert sam.get("/v1/subscription").status_code == 404
        stack.cli("subscriptions", "start", "sam", "e2e-pro")
        body = sam.get("/v1/subscription").json()
        assert (body["plan"], body["credits_per_period"], body["status"]) == (
            "e2e-pro", 5, "active")
        assert abs(body["period_days"] - 3 / 86400) < 1e-9 and body["renews_at"]
        assert sam.get("/v1/account").json()["balance"] == 6
        until(lambda: sam.get("/v1/account").json()["balance"], lambda b: b >= 11)
        stack.cli("subscriptions", "cancel", "sam")
        assert sam.get("/v1/subscription").json()["status"] == "cancelled"
        lapsed = until(lambda: sam.get("/v1/subscription").json(),
                       lambda b: b["status"] == "lapsed")
        assert lapsed["renews_at"] is None
        balance = sam.get("/v1/account").json()["balance"]
        time.sleep(4)  # more than a period: nothing more is granted
        assert sam.get("/v1/account").json()["balance"] == balance


def test_the_audit_replays_referrals_and_subscriptions(stack):
    audit = stack.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "I8 I9 hold" in audit.stdout


def test_referrals_need_a_key(stack):
    r = httpx.get(f"{stack.base_url}/v1/referrals", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
