"""Chaos soak: a seeded fault schedule played against a real stack under load.

``schedule`` plans the faults from a seed, ``faults`` injects them, ``load``
is the client traffic, ``verdict`` judges the run once it has settled and
``soak`` ties them together (entry point: ``python -m bench.soak``).
"""
