"""One decode step of a Llama-family model over a slot KV cache, from the model's weights.

The step runs one token for each of the first ``b`` rows of a ``workers.decoders.slot_cache``
cache: every row writes its new keys and values at its own position, attends
over the first ``columns`` columns of its row (a mask built on the device from
the positions hides the rest) and takes rotary angles for its own position. It
calls the model's own modules (embedding, RMSNorms, projections, MLP, lm_head)
and rotary embedding, so it computes what the Hugging Face forward computes, but
with no data-dependent Python control flow and no host synchronisation: on CUDA
``GraphedSteps`` captures it once per (rows, columns) bucket in a CUDA graph and
replays it with one launch per step. On a CPU it runs eagerly.

A step is launch-bound at small batches (a graph replays every kernel, each a
few microseconds), so it is written in few kernels: one GEMM for the q/k/v
projections and one for gate/up (their weights concatenated once, a copy of
most of the model's weights), fused RMSNorm (``F.rms_norm``), rotary angles for
q and k together, the output and down projections added into the residual by
``addmm``. GQA: a step has one query token per row, so the query heads that
share a KV head are passed to attention as that KV head's query "positions"
([b, kv_heads, group, head_dim]); no repeat of the keys and values is needed.
In float32 this equals the Hugging Face forward to round-off; in bf16 the fused
kernels round once where it rounds twice.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Rope types whose angles depend on the position alone (not on the sequence length
# seen so far), so a table computed once holds them.
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")


def unsupported(model: Any) -> str | None:
    """Why ``LlamaSlotStep`` cannot run ``model``, or None when it can."""
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        return f"model type {getattr(config, 'model_type', None)!r} is not llama"
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
            or {}).get("rope_type", "default")
    if rope not in _STATIC_ROPE:
        return f"rope type {rope!r} depends on the sequence length"
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if base is None or not layers or not hasattr(model, "lm_head") or \
            not hasattr(base, "rotary_emb"):
        return "not laid out as LlamaForCausalLM"
    if any(not hasattr(layer, part) for layer in layers for part in _LAYER_PARTS):
        return "a layer is not laid out as LlamaDecoderLayer"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    return None


def _joined(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) computing several linears in one GEMM."""
    weight = torch.cat([m.weight for m in linears]).detach()
    biases = [m.bias for m in linears]
    bias = None if biases[0] is None else torch.cat(biases).detach()
    return weight, bias


def _add_linear(h: torch.Tensor, x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """``h + linear(x)``, one kernel where there is no bias."""
    if linear.bias is None:
        return torch.addmm(h, x, linear.weight.t())
    return h + linear(x)


class _Layer:
    """One decoder layer's weights, joined for the step."""

    def __init__(self, layer: Any) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _joined(attn.q_proj, attn.k_proj, attn.v_proj)
        self.gate_up = _joined(mlp.gate_proj, mlp.up_proj)
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        norms = layer.input_layernorm, layer.post_attention_layernorm
        self.norms = [(n.weight, getattr(n, "variance_epsilon", getattr(n, "eps", 1e-6)))
                      for n in norms]


class LlamaSlotStep:
    """Logits of one decode step over a slot cache (see the module docstring)."""

    def __init__(self, model: Any, positions: int) -> None:
        """``positions``: how many rotary positions to tabulate (the cache's most columns)."""
        base, config = model.model, model.config
        self.embed, self.norm, self.lm_head = base.embed_tokens, base.norm, model.lm_head
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = base.layers[0].self_attn.scaling
        weight = self.embed.weight
        with torch.inference_mode():
            self.layers = [_Layer(layer) for layer in base.layers]
            where = torch.arange(positions, device=weight.device)[None]
            cos, sin = base.rotary_emb(weight[:1], position_ids=where)
        # [positions, head_dim], the model's dtype. rotate_half(x) * sin is
        # roll(x, half) * sin with the first half of sin negated.
        half = self.head_dim // 2
        self.cos = cos[0]
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = positions.clamp(max=self.cos.shape[0] - 1)
        return self.cos[angle][:, None], self.sin[angle][:, None]  # [tokens, 1, dim]

    def _attention_inputs(self, layer: _Layer, h: torch.Tensor, cos: torch.Tensor,
                          sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For tokens ``h`` [tokens, hidden]: q and k rotated ([tokens, heads + kv_heads,
        dim]) and v ([tokens, kv_heads, dim])."""
        (weight, eps), _ = layer.norms
        rotated = self.heads + self.kv_heads
        qkv = F.linear(F.rms_norm(h, weight.shape, weight, eps), *layer.qkv)
        qkv = qkv.view(h.shape[0], rotated + self.kv_heads, self.head_dim)
        qk = qkv[:, :rotated]
        return torch.addcmul(qk * cos, qk.roll(self.head_dim // 2, dims=-1), sin), \
            qkv[:, rotated:]

    def _after_attention(self, layer: _Layer, h: torch.Tensor, out: torch.Tensor):
        """The residual stream after the attention output ``out`` [tokens, heads * dim]
        and the MLP."""
        _, (weight, eps) = layer.norms
        h = _add_linear(h, out, layer.o_proj)
        gate, up = F.linear(F.rms_norm(h, weight.shape, weight, eps), *layer.gate_up).chunk(2, -1)
        return _add_linear(h, F.silu(gate) * up, layer.down_proj)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        return self.lm_head(F.rms_norm(h, norm.weight.shape, norm.weight, norm.variance_epsilon))

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor,
                 columns: int) -> torch.Tensor:
        """Logits [b, vocab] for tokens ``ids`` [b] at positions ``pos`` [b] of rows 0..b-1
        of ``kv`` ([layers, 2, rows, kv_heads, length, head_dim], written in place).
        Every row's position must be below ``columns`` for its output to be right; rows
        that are not (padding rows of a bucket) still run, clamped into bounds."""
        b, dim, kv_heads = ids.shape[0], self.head_dim, self.kv_heads
        rows = torch.arange(b, device=ids.device)
        at = pos.clamp(max=kv.shape[4] - 1)
        cos, sin = self._rope(pos)
        visible = torch.arange(columns, device=ids.device)[None] <= pos[:, None]
        mask = visible[:, None, None]  # [b, 1, 1, columns]: each row sees its own prefix
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            qk, v = self._attention_inputs(layer, h, cos, sin)
            keys, values = kv[i, 0], kv[i, 1]
            keys[rows, :, at] = qk[:, self.heads:]
            values[rows, :, at] = v
            out = F.scaled_dot_product_attention(
                qk[:, :self.heads].reshape(b, kv_heads, self.heads // kv_heads, dim),
                keys[:b, :, :columns], values[:b, :, :columns], attn_mask=mask,
                scale=self.scale)
            h = self._after_attention(layer, h, out.reshape(b, self.heads * dim))
        return self._logits(h)

    def prefill(self, ids: torch.Tensor, kv: torch.Tensor, start: int,
                lengths: torch.Tensor) -> torch.Tensor:
        """Run right-padded prompts ``ids`` [n, width] into rows start..start+n-1 of
        ``kv`` (columns 0..width-1; causal attention keeps the padding after each prompt
        out of it); logits [n, vocab] after each row's last real token (``lengths``)."""
        n, width = ids.shape
        dim, group = self.head_dim, self.heads // self.kv_heads
        cos, sin = self._rope(torch.arange(width, device=ids.device).repeat(n))
        h = self.embed(ids.reshape(-1))
        for i, layer in enumerate(self.layers):
            qk, v = self._attention_inputs(layer, h, cos, sin)
            qk = qk.view(n, width, -1, dim).transpose(1, 2)  # [n, heads, width, dim]
            v = v.view(n, width, -1, dim).transpose(1, 2)
            k = qk[:, self.heads:]
            kv[i, 0, start:start + n, :, :width] = k
            kv[i, 1, start:start + n, :, :width] = v
            out = F.scaled_dot_product_attention(
                qk[:, :self.heads], k.repeat_interleave(group, dim=1),
                v.repeat_interleave(group, dim=1), is_causal=True, scale=self.scale)
            h = self._after_attention(layer, h, out.transpose(1, 2).reshape(n * width, -1))
        last = torch.arange(n, device=ids.device) * width + lengths - 1
        return self._logits(h[last])


class GraphedSteps:
    """Runs a ``LlamaSlotStep`` for the first ``b`` rows of ``ids``/``pos``/``kv``.

    On CUDA each (b, columns) is captured in a CUDA graph the first time it runs and
    replayed after; graphs read ``ids``/``pos`` and the cache in place, so they stay
    valid until ``reset`` (call it when the cache is reallocated). Elsewhere the step
    runs eagerly. ``run`` returns (logits [b, vocab], argmax tokens [b]), both on the
    device and overwritten by the next run.
    """

    def __init__(self, step: LlamaSlotStep, graphs: bool) -> None:
        self.step, self.graphs = step, graphs
        self._captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Any]] = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs else None

    def _eager(self, ids: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor, b: int,
               columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.step(ids[:b], pos[:b], kv, columns)
        return logits, logits.argmax(dim=-1)

    def run(self, ids: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor, b: int,
            columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.graphs:
            return self._eager(ids, pos, kv, b, columns)
        key = (b, columns)
        if key not in self._captured:
            # A warm-up pass first (lazy inits, kernel selection) on a side stream, as
            # capture requires. It is this very step, so its cache writes are the ones
            # the replay below makes again.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._eager(ids, pos, kv, b, columns)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = self._eager(ids, pos, kv, b, columns)
            self._captured[key] = (graph, outputs)
        graph, outputs = self._captured[key]
        graph.replay()
        return outputs

    def reset(self) -> None:
        """Forget every graph (the cache they wrote to is gone)."""
        if self._captured:
            torch.cuda.synchronize()  # none may still be running when it is destroyed
        self._captured.clear()
        if self.graphs:  # the old pool went with the last graph that used it
            self._pool = torch.cuda.graph_pool_handle()
