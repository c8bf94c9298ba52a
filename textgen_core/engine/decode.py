"""A decoding step for Llama-family models that calls tensor operations only, not the library's modules.

A decoding step computes one token per row. For a small model and a small batch its tensors are
tiny, and most of the step was spent around them: transformers' forward goes through about 200
module calls, decorators and keyword plumbing per layer, and builds masks and output records
(profiled: one row, 40 ms a step, of which the matrix products took 15 ms). Here the step is a loop
over the layers' own weights with the same operations in the same order, so a row's logits are the
library's to the bit (``tests/integration/test_decode.py``), and with fewer tensor calls:

- layers that read one input and share an int8 product (q, k, v; gate, up) are one call, and
  each layer takes a view of its columns;
- q and k are rotated together, and the rotary angles and the attention mask are made once per
  step, not once per layer;
- keys and values go straight into the slots (``slots.py``) and attention is ``blocked_decode``,
  the kernel the library's path uses too (``attention.py``).

The prefill (every prompt token at once) has its own pass too, :meth:`LlamaDecoder.prefill`, for the
same reason: a prompt of 40 tokens took 98 ms through the library, of which its products took 24 ms
and its tensor operations 38 ms. Its keys, values and logits are the library's to the bit as well.
float32 prefills through the library (its sdpa kernel, which ``attention.py`` leaves it). A model this
module does not know (another architecture, a sliding window) runs through the library as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from textgen_core.engine import attention
from textgen_core.engine.attention import blocked_decode, blocked_prefill, decode_bias
from textgen_core.engine.quantize import Int8Linear
from textgen_core.engine.slots import SlotCache

# Architectures whose decoder layer computes exactly as ``LlamaDecoder`` does.
LLAMA_LIKE = ("LlamaForCausalLM",)


class _Projection:
    """The linear layers that read one input, computed in one call where they share an int8 product."""

    def __init__(self, linears: Sequence[Any]):
        self.linears = list(linears)
        first = self.linears[0]
        shared = (all(isinstance(m, Int8Linear) for m in self.linears)
                  and all(m.product is first.product for m in self.linears)
                  and first.product.layers == len(self.linears))
        self.product = first.product if shared else None
        # The layers' outputs are adjacent columns of one product, with no bias added: views of it.
        self.adjacent = shared and all(m.bias is None for m in self.linears)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.product is None:
            return [_linear(m, x) for m in self.linears]
        y = self.product.compute(x)
        return [m.columns(y) for m in self.linears]


def _linear(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(module) is torch.nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``LlamaRMSNorm``: in float32, then back to the input's dtype before the weight."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``[rows, heads, dim]`` (as ``apply_rotary_pos_emb``)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _Layer:
    def __init__(self, layer: Any):
        attn, mlp = layer.self_attn, layer.mlp
        self.ln_in, self.eps_in = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.ln_post = layer.post_attention_layernorm.weight
        self.eps_post = layer.post_attention_layernorm.variance_epsilon
        self.qkv = _Projection([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = _Projection([attn.o_proj])
        self.gate_up = _Projection([mlp.gate_proj, mlp.up_proj])
        self.down = _Projection([mlp.down_proj])
        self.index = attn.layer_idx
        self.scaling = attn.scaling


class LlamaDecoder:
    """One decoding step of a Llama-style model over a :class:`SlotCache` (see the module's docstring)."""

    def __init__(self, model: Any):
        config = model.config
        self.embed = model.model.embed_tokens.weight
        self.rotary = model.model.rotary_emb
        self.norm, self.norm_eps = model.model.norm.weight, model.model.norm.variance_epsilon
        self.head = _Projection([model.lm_head])
        self.layers = [_Layer(layer) for layer in model.model.layers[: config.num_hidden_layers]]
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        # The blocked prefill kernel is the library path's for bf16 and fp16 only (attention.py).
        self.prefills = self.embed.dtype != torch.float32

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The last column's logits ``[rows, vocab]`` (float32) and each layer's keys and values
        ``[rows, kv_heads, width, dim]`` of left-padded prompts ``ids`` ``[rows, width]`` (``mask`` 1
        on real tokens), as the library's forward with ``logits_to_keep=1`` computes them."""
        rows, width = ids.shape
        h = F.embedding(ids, self.embed)
        cos, sin = self.rotary(h, positions)  # [rows, width, dim]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # What the library's mask says: a query sees the real keys up to its own column.
        seen = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril() & mask.bool()[:, None, :]
        seen = seen[:, None]  # [rows, 1, width, width]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        keys, values = [], []
        for layer in self.layers:
            x = _rms_norm(h, layer.ln_in, layer.eps_in)
            q, k, v = layer.qkv(x)
            q = _rotate(q.view(rows, width, heads, dim).transpose(1, 2), cos, sin)
            k = _rotate(k.reshape(rows, width, kv_heads, dim).transpose(1, 2), cos, sin)
            # Its own storage: a view would keep the whole q/k/v product of every layer alive.
            v = v.reshape(rows, width, kv_heads, dim).transpose(1, 2).contiguous()
            out = blocked_prefill(q, k, v, seen, layer.scaling)  # [rows, width, heads, dim]
            (o,) = layer.o(out.reshape(rows, width, heads * dim))
            h = h + o.view(h.shape)
            x = _rms_norm(h, layer.ln_post, layer.eps_post)
            gate, up = layer.gate_up(x)
            (down,) = layer.down(F.silu(gate) * up)
            h = h + down.view(h.shape)
            keys.append(k)
            values.append(v)
        (logits,) = self.head(_rms_norm(h[:, -1], self.norm, self.norm_eps))
        return logits.float(), keys, values

    def __call__(self, next_ids: torch.Tensor, cache: SlotCache, mask: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[rows, vocab]`` (float32) for ``next_ids`` ``[rows, 1]``, written into
        ``cache`` at the columns :meth:`SlotCache.step_inputs` gave with ``mask`` and ``positions``."""
        rows = next_ids.shape[0]
        h = F.embedding(next_ids.reshape(rows), self.embed)
        cos, sin = self.rotary(h, positions)  # [rows, 1, dim]
        bias = decode_bias(mask)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        for layer in self.layers:
            x = _rms_norm(h, layer.ln_in, layer.eps_in)
            q, k, v = layer.qkv(x)
            if layer.qkv.adjacent:  # q and k side by side in one product: rotated as one tensor
                qk = _rotate(torch.as_strided(q, (rows, heads + kv_heads, dim), (q.stride(0), dim, 1)), cos, sin)
                q, k = qk[:, :heads], qk[:, heads:]
            else:  # separate tensors: each rotated alone
                q = _rotate(q.view(rows, heads, dim), cos, sin)
                k = _rotate(k.reshape(rows, kv_heads, dim), cos, sin)
            keys, values = cache.update(k.unsqueeze(2), v.reshape(rows, kv_heads, 1, dim), layer.index)
            out = blocked_decode(q, keys, values, bias, layer.scaling)
            (o,) = layer.o(out.reshape(rows, heads * dim))
            h = h + o
            x = _rms_norm(h, layer.ln_post, layer.eps_post)
            gate, up = layer.gate_up(x)
            (down,) = layer.down(F.silu(gate) * up)
            h = h + down
        (logits,) = self.head(_rms_norm(h, self.norm, self.norm_eps))
        return logits.float()


def decoder_for(model: Any) -> LlamaDecoder | None:
    """The lean step for ``model``, or None where the library's forward must decode (an architecture
    not listed, another attention than the engine's blocked one, a sliding window, layers of other
    kinds, or not a transformers model at all)."""
    if type(model).__name__ not in LLAMA_LIKE or not isinstance(model, torch.nn.Module):
        return None
    config = model.config
    if getattr(config, "_attn_implementation", None) != attention.NAME:  # its decode is blocked_decode
        return None
    if getattr(config, "sliding_window", None) or getattr(config, "hidden_act", "silu") != "silu":
        return None
    if getattr(config, "pretraining_tp", 1) != 1:
        return None
    return LlamaDecoder(model)
