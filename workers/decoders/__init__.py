"""Decode backends: the forward passes of a continuous batch and the KV cache
they run on (:mod:`workers.decoders.backend` is the port).

- :mod:`~workers.decoders.padded`: the model's own forward over a left-padded
  cache, for any model, with shared prompt heads prefilled once
  (:mod:`~workers.decoders.prefix`);
- :mod:`~workers.decoders.slots`: a slot cache (:mod:`~workers.decoders.slot_cache`)
  and a decode step from a Llama-family model's weights
  (:mod:`~workers.decoders.llama_step`), CUDA-graphed on a GPU;
- :mod:`~workers.decoders.factory`: which one a batcher runs.
"""
