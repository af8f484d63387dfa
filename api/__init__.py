"""The OpenAI-compatible HTTP API: authenticates, resolves the zone, queues jobs
on the bus and answers sync, streaming and async callers. It never runs a model."""
