"""The gate: the trust boundary between nodes and the network.

Nodes are run by strangers. Everything a node says arrives on
``node.<its id>.…`` subjects (its NATS user may publish nowhere else), and the
gate, a trusted service, checks it before anything reaches the claims, the log
or the API: leases (:mod:`gate.leasing`), outcomes with usage recounted
(:mod:`gate.results`, :mod:`gate.usage`), and liveness, which moves a dead
node's jobs on within a second (:mod:`gate.liveness`). :mod:`gate.node_requests`
runs them.
"""
