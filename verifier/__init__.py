"""The verifier: spot checks of completed work, run by the network.

A node's signature proves who sent a result, not that it is right. The gate
sends a sampled share of completions (every one of a node on probation) to the
``checks`` queue; the verifier re-checks each against the model it claims
(:mod:`verifier.judges`: the echo model is re-run, a real model prefills the
prompt and the claimed output once and ranks each claimed token,
:mod:`verifier.prefill`), logs the verdict, keeps the node's standing in its
grant (probation, verified, suspended) and sends probe jobs to nodes on
probation (:mod:`verifier.spot_checks`). Settlement turns a failed check into
compensating events: the consumer's debit given back, the operator's RCP revoked.
"""
