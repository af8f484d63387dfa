"""Helpers of the referral and subscription tests: relay the ledger onto the
log, then replay the log through the audit's checker against the ledger."""
from bus import subjects
from ledger.relay import Relay, last_relayed
from projections.audit import compare_ledger
from projections.invariants import Checker
from projections.replay import read_stream


async def relay_all(ledger, js) -> None:
    """Every ledger event so far onto the log (after what is there already)."""
    relay, position = Relay(ledger, js), await last_relayed(js)
    while (moved := await relay.once(position)) != position:
        position = moved


async def audit_violations(ledger, js) -> list[str]:
    """The log replayed by the audit's checker, compared with the ledger's accounts."""
    await relay_all(ledger, js)
    checker = Checker()
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    async for batch in read_stream(js, 1, last):
        checker.observe_raw(batch)
    checker.finish(grace_s=3600)
    compare_ledger(checker, ledger.accounts(), checker.v)
    return checker.v.lines
