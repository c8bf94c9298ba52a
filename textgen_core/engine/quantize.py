"""int8 weights for a model's decoding steps on a CPU: a quarter of float32's bytes per step.

A decode step of a small batch reads every weight once and computes little, so its time is the
time to read them. Each linear layer's weight becomes int8 with one scale per output channel
(symmetric, ``round(w / (max|w| / 127))``), and the product runs in torch's
``_weight_int8pack_mm`` kernel, which takes bfloat16 activations and widens the int8 weights in
registers. Measured on a 2-core AVX512-BF16 CPU, one row through a 1536x576 layer: 112 us in
float32, 36 us here; 64 rows: the same as float32. That kernel computes every row alone, in the
same order whatever the number of rows, so a greedy row's text does not depend on its batchmates
(bf16's own matrix kernels switch paths between one row and several and differ in the last bit).

A prefill (many tokens per row) is the opposite: it computes a lot per weight, and there the int8
kernel runs at a third of the speed of the bf16 one (a 1536x576 layer over 3,072 tokens: 31 ms,
8 ms in bf16). So each layer keeps its bf16 weights too, and a call with more than one token per
row uses them: every prompt is prefilled by the bf16 kernel and every step decoded by the int8
one, whatever the batch, so a row's numbers still do not depend on its batchmates as long as the
bf16 kernel computes each of many rows alone (``tests/unit/test_quantize.py`` checks this CPU's,
the engine tests the whole text). The cost is memory: 3 bytes a weight instead of 2.

The embedding table stays as it is (a lookup reads one row); a tied output head gets its own int8
copy and shares the table as its bf16 weights. ``tests/integration/test_engine.py`` checks the
text against float32's perplexity.
"""

from __future__ import annotations

import torch

# Activations the kernel takes. float32 activations go through a slow path (600 us for one row).
ACTIVATION_DTYPE = torch.bfloat16


class Int8Linear(torch.nn.Module):
    """``y = x @ (q * scale).T + bias``, with ``q`` int8 ``[out, in]`` and ``scale`` per output channel."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(ACTIVATION_DTYPE))
        bias = linear.bias.detach().to(ACTIVATION_DTYPE) if linear.bias is not None else None
        self.register_buffer("bias", bias)
        # For prefills (a model loaded in bf16 shares the tensor; a tied head shares the embedding).
        self.register_buffer("weight", linear.weight.detach().to(ACTIVATION_DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] > 1:  # a prefill: [rows, tokens, in], compute-bound
            return torch.nn.functional.linear(x.to(ACTIVATION_DTYPE), self.weight, self.bias)
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != ACTIVATION_DTYPE or not flat.is_contiguous():
            flat = flat.to(ACTIVATION_DTYPE).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=int8"


def int8_linears(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` (on a CPU, in bfloat16) by an :class:`Int8Linear`, in
    place; returns how many. Each keeps its bf16 weights for prefills."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    return replaced
