"""Read models built from the EVENTS stream.

The projector process (:mod:`projections.main`) consumes the immutable event
log and keeps query tables (job status, :mod:`projections.jobs`; balances,
reservations, key usage and operator RCP, :mod:`projections.credits`) in a
relational store: SQLite by default, PostgreSQL when ``INFERBUS_DATABASE_URL``
is set. Each
store records the stream sequence it has applied (``tracking``) in the same
transaction as the rows, so every event is applied exactly once and the read
model can always be rebuilt from sequence 1. The API reads through
:mod:`projections.views`; ``inferbus audit`` (:mod:`projections.audit`)
replays the log to check the money invariants and the live read model.
"""
