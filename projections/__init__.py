"""The read side: read models built from the EVENTS stream, and the audit.

The projector (:mod:`projections.projector`) consumes the immutable event log
and keeps query tables in a relational store (:mod:`projections.store`:
SQLite by default, PostgreSQL when ``INFERBUS_DATABASE_URL`` is set). Each
read model is one module holding its schema, how each event changes it and
the queries that read it (:mod:`projections.readmodels` lists them): job
status (:mod:`projections.job_status`), balances, reservations, key usage and
operator RCP (:mod:`projections.balances`), and per-zone timings for the
status board (:mod:`projections.zone_jobs`); :mod:`projections.lifecycle`
is the job status machine they share. The store records the stream sequence
it has applied (``tracking``) in the same transaction as the rows, so every
event is applied exactly once and the read models can always be rebuilt from
sequence 1 (:mod:`projections.rebuild`). ``inferbus audit``
(:mod:`projections.audit`) replays the log to check the money invariants
(:mod:`projections.invariants`) and the live read models. Nothing here
decides routing or money.
"""
