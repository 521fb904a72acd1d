"""Linear layers on a CPU through oneDNN with pre-packed weights, instead of torch's default (MKL) matmul.

Why: a verify step multiplies a few rows (K+1 tokens, or one token of each of 8 batched sessions) by every weight
matrix. MKL's float32 GEMM handles these skinny products poorly on this project's AMD EPYC (measured, SmolLM2's
MLP 576x1536: 1 row 74 us, 8 rows 222 us; the 49152-row LM head: 10.3 ms for 1 row, 19.4 ms for 8), while oneDNN
on a weight reordered once into its blocked layout takes 65 / 110 us and 4.9 / 4.9 ms. On the default model a
one-token step goes from 61 to 40 ms and an 8-token verify block from 114 to 55 ms (float32).

`use_onednn_linears(model)` turns every `nn.Linear` of a model into a `OneDnnLinear` in place (same parameters,
same state dict). The packed copy of each weight is made on first use and kept in a holder on the module that a
`copy.deepcopy` leaves empty (oneDNN's opaque tensors cannot be copied); it is remade if the weight changes.
The packed path runs only where it is exact to use: CPU inputs in float32 or bfloat16 without autograd (training
and other devices go through `F.linear`), in the dtypes this CPU packs (bfloat16 needs AVX-512 or AVX-NE-CONVERT).
Memory: one packed copy of every weight (the dense ones stay, since embeddings, fingerprints, trained heads and
int8 quantization read them).

Numerics: oneDNN sums in another order than MKL, so float32 logits differ in the last bits (~1e-4 on SmolLM2);
greedy identity against the target's own decode holds because both run through the same layers.

`SPECDEC_CPU_GEMM=default` turns it off (`onednn`, the default, asks for it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MODE_ENV = "SPECDEC_CPU_GEMM"
PACKABLE_DTYPES = (torch.float32, torch.bfloat16)  # what oneDNN can pack; `packed_dtypes()`: what this CPU can
# oneDNN picks the packed layout for an expected number of rows; 16 covers verify blocks and batched decode steps
# and costs prefills nothing measurable (1536x576 float32: 1 row 47-65 us, 512 rows 4.4-4.8 ms for any hint >= 8)
PACK_ROWS_HINT = 16

_enabled = True  # `stock_linears()` turns the packed path off process-wide (benchmarks of the stock path)


class PackedWeight:
    """A linear's oneDNN-packed weight and the (address, version, dtype) of the weight it was packed from, remade
    when those change. A deepcopy starts empty: oneDNN's opaque tensors cannot be copied."""

    __slots__ = ("packed", "source")

    def __init__(self) -> None:
        self.packed: torch.Tensor | None = None
        self.source: tuple[int, int, torch.dtype] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedWeight:
        return PackedWeight()

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        version = -1 if weight.is_inference() else weight._version  # inference tensors keep no version (nor change)
        source = (weight.data_ptr(), version, weight.dtype)
        if self.packed is None or source != self.source:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)
            self.source = source
        return self.packed


class OneDnnLinear(nn.Linear):
    """`nn.Linear` whose CPU inference forward uses a oneDNN-packed copy of its weight (see the module docstring).
    Made by `use_onednn_linears`, which gives it its `onednn` holder."""

    onednn: PackedWeight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (  # the packed path only where it is exact to use; else torch's own
            not _enabled
            or x.dtype is not weight.dtype
            or x.dtype not in packed_dtypes()
            or not x.is_cpu
            or torch.is_grad_enabled()
        ):
            return F.linear(x, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(  # type: ignore[no-any-return]
            x, self.onednn.of(weight), self.bias, "none", [], ""
        )


@functools.cache
def packed_dtypes() -> frozenset[torch.dtype]:
    """The dtypes this torch and CPU run packed linears in, each checked against `F.linear` on a small product
    (oneDNN packs bfloat16 only with avx512bw/vl/dq or avx_ne_convert: an AVX2-only CPU runs float32 alone)."""
    if not torch.backends.mkldnn.is_available():
        return frozenset()
    return frozenset(dtype for dtype in PACKABLE_DTYPES if _packs_exactly(dtype))


def _packs_exactly(dtype: torch.dtype) -> bool:
    try:
        gen = torch.Generator().manual_seed(0)  # its own: probing must not move the caller's global RNG
        weight, bias, x = (torch.randn(*shape, generator=gen).to(dtype) for shape in ((32, 64), (32,), (3, 64)))
        with torch.inference_mode():
            got = torch.ops.mkldnn._linear_pointwise(
                x, torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT), bias, "none", [], ""
            )
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            return bool(torch.allclose(got.float(), F.linear(x, weight, bias).float(), rtol=tol, atol=tol))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def onednn_available() -> bool:
    """Whether this torch can run packed oneDNN linears in float32 (the CPU default dtype)."""
    return torch.float32 in packed_dtypes()


def wanted() -> bool:
    """`SPECDEC_CPU_GEMM` asks for oneDNN (the default) and this torch supports it."""
    mode = os.environ.get(MODE_ENV, "onednn").strip().lower()
    if mode not in ("onednn", "default"):
        raise ValueError(f"{MODE_ENV} must be 'onednn' or 'default', got {mode!r}")
    return mode == "onednn" and onednn_available()


def use_onednn_linears(model: Any) -> int:
    """Turn the model's `nn.Linear` modules into `OneDnnLinear` in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDnnLinear
            cast(OneDnnLinear, module).onednn = PackedWeight()
            count += 1
    return count


@contextlib.contextmanager
def stock_linears() -> Iterator[None]:
    """Within: every `OneDnnLinear` runs torch's default `F.linear` (process-wide, for benchmarks that compare the
    two; nothing else may run models meanwhile)."""
    global _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = True


def uses_onednn(model: Any) -> bool:
    return any(type(module) is OneDnnLinear for module in model.modules())


def restore_linears(model: Any) -> None:
    """Undo `use_onednn_linears` (e.g. before torch's int8 quantization, which converts plain `nn.Linear` only)."""
    for module in model.modules():
        if type(module) is OneDnnLinear:
            module.__class__ = nn.Linear  # type: ignore[assignment]  # the class it was made from
            del module.onednn
