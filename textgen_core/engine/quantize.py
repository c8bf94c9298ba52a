"""int8 weights and activations for a model's linear layers on a CPU (W8A8): exact integer products.

A decoding step of a small batch reads every weight once and computes little, so its time is the
time to read them; a big batch or a prefill computes a lot per weight. int8 helps both: a quarter
of float32's bytes, and the CPU's int8 dot products (VNNI) run at four times float32's rate. Each
weight row (output channel) is stored as int8 with its own scale (``round(w / (max|w| / 127))``);
each activation row (one token) is quantized the same way when it enters a layer, and the product
``torch._int_mm`` sums int8 x int8 into int32. Measured on a 2-core AVX512 CPU, a 1536x576 layer:
one row 10 us (bf16 96 us, weight-only int8 30 us), 64 rows 100 us (bf16 230 us), 3,072 rows 4 ms
(bf16 10 ms). Per-token quantization keeps the text the model's: perplexity on a test passage
within 2% of float32's (``tests/integration/test_engine.py``).

Integer sums are exact, so a row's result does not depend on how the kernel splits the work,
on any CPU: with the per-row scales, its numbers are the same alone, in a batch of 64, or as one
token of a prefill (``tests/unit/test_quantize.py``). That is the property the engine's greedy
text rests on (``attention.py`` keeps it for attention).

Layers that read the same input (a transformer's q, k and v projections; gate and up) form a
group: the input is quantized once and one product covers them all, each layer taking its columns.
The embedding table stays as it is (a lookup reads one row); a tied output head gets its own int8
copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Layers of one block that read the same input, by the names Llama-style models give them.
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_TINY = torch.finfo(torch.float32).tiny
PRODUCT_ROWS = 256  # rows a product takes at a time (Int8Product.compute)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``x`` ``[rows, in]`` as int8 with its own float32 scale ``[rows, 1]``."""
    scale = x.abs().amax(-1, keepdim=True).float().clamp_(min=_TINY).div_(127)  # a max is exact in any dtype
    # A float32 copy first (never ``x`` itself, which the caller keeps): a division that promotes
    # bf16 itself measured 4x slower on a prefill's rows.
    return x.to(torch.float32, copy=True).div_(scale).round_().to(torch.int8), scale


def _version(x: torch.Tensor) -> int:
    """How many times ``x`` was written in place; an inference-mode tensor keeps no count (-1)."""
    return -1 if x.is_inference() else x._version


class Int8Product:
    """The int8 weights of one or more layers that read the same input, stacked ``[sum(out), in]``,
    and the product of the last input they were given (so the group's layers share it)."""

    def __init__(self, linears: Sequence[torch.nn.Linear]):
        weight = torch.cat([linear.weight.detach().float() for linear in linears])
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=_TINY)
        self.qweight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.scale = scale
        self.in_features = weight.shape[1]
        self.layers = len(linears)
        # The last input's product, until the group's other layers have read it (or another input comes).
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None
        self._unread = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ w.T`` ``[rows, sum(out)]`` in ``x``'s dtype, for ``x`` ``[..., in]``."""
        version = _version(x)
        last = self._last
        if last is not None and last[0] is x and last[1] == version:
            self._unread -= 1
            if not self._unread:
                self._last = None
            return last[2]
        y = self.compute(x)
        self._last, self._unread = ((x, version, y), self.layers - 1) if self.layers > 1 else (None, 0)
        return y

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """The product, always computed (no sharing): ``[rows, sum(out)]`` in ``x``'s dtype. Many rows
        (a prefill) go ``PRODUCT_ROWS`` at a time, so the int32 and float32 intermediates stay in the
        CPU's caches: 2,496 rows through a 576x3072 layer took 31 ms whole, 10 ms in slices. Rows are
        computed alone either way, so slicing changes no number."""
        x = x.reshape(-1, self.in_features)
        if x.shape[0] <= PRODUCT_ROWS:
            return self._rows(x).to(x.dtype)
        out = torch.empty(x.shape[0], self.qweight.shape[0], dtype=x.dtype, device=x.device)
        for start in range(0, x.shape[0], PRODUCT_ROWS):
            out[start:start + PRODUCT_ROWS] = self._rows(x[start:start + PRODUCT_ROWS])
        return out

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        xq, xscale = quantize_rows(x)
        product = torch._int_mm(xq, self.qweight.t())  # the [out, in] layout is the kernel's fast one
        # float() first: a multiply that promotes int32 itself measured 1.3x slower.
        return product.float().mul_(xscale).mul_(self.scale)


class Int8Linear(torch.nn.Module):
    """``y = (q(x) @ q(w).T) * x_scale * w_scale + bias``: columns ``[start, stop)`` of a (shared)
    :class:`Int8Product`."""

    def __init__(self, linear: torch.nn.Linear, product: Int8Product | None = None, start: int = 0):
        super().__init__()
        self.product = product or Int8Product([linear])
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.start, self.stop = start, start + linear.out_features
        self.bias = linear.bias.detach() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.columns(self.product(x)).reshape(*x.shape[:-1], self.out_features)

    def columns(self, y: torch.Tensor) -> torch.Tensor:
        """This layer's output ``[rows, out]`` from its product's ``[rows, sum(out)]``, with its bias."""
        if self.product.layers > 1:  # a group's: its columns, a view
            y = y[:, self.start:self.stop]
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weights=int8, "
                f"activations=int8 per row")


def int8_linears(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`Int8Linear`, in place (layers that read
    the same input sharing one product); returns how many. The float weights they held are freed
    unless something else shares them (a tied embedding)."""
    replaced = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for names in SHARED_INPUT:
            linears = [c for name in names if isinstance(c := children.get(name), torch.nn.Linear)]
            if len(linears) != len(names) or len({c.in_features for c in linears}) != 1:
                continue
            product, start = Int8Product(linears), 0
            for name, linear in zip(names, linears, strict=True):
                setattr(parent, name, Int8Linear(linear, product, start))
                start += linear.out_features
                replaced += 1
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    return replaced
