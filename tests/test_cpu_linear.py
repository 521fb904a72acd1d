"""Packed oneDNN linears on the CPU (specdec.cpu_linear): same results as `F.linear`, used only where exact to use,
remade when the weight changes, harmless to deepcopy and undone for int8 quantization; models loaded on the CPU use
them unless SPECDEC_CPU_GEMM=default."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specdec import cpu_linear
from specdec.cpu_linear import OneDnnLinear, restore_linears, use_onednn_linears
from specdec.modeling import load_model, quantize_int8

pytestmark = pytest.mark.skipif(not cpu_linear.onednn_available(), reason="this torch has no oneDNN linear")


def packed_copy(linear: nn.Linear) -> OneDnnLinear:
    model = nn.Sequential(copy.deepcopy(linear))
    assert use_onednn_linears(model) == 1
    packed = model[0]
    assert isinstance(packed, OneDnnLinear)
    return packed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [0, 1, 5, 16, 37])
def test_packed_linear_matches_f_linear(dtype: torch.dtype, rows: int) -> None:
    torch.manual_seed(0)
    plain = nn.Linear(96, 48).to(dtype)
    packed = packed_copy(plain)
    x = torch.randn(2, rows, 96, dtype=dtype)  # a leading batch dimension, as in a model's [B, T, H]
    with torch.inference_mode():
        got, want = packed(x), plain(x)
    # the packed path ran, in the dtypes this CPU packs (bfloat16 needs AVX-512): else F.linear, never an error
    assert (packed.onednn.packed is not None) == (dtype in cpu_linear.packed_dtypes())
    assert got.shape == want.shape == (2, rows, 48)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_probing_the_packable_dtypes_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    cpu_linear.packed_dtypes.cache_clear()
    assert torch.float32 in cpu_linear.packed_dtypes()
    assert torch.equal(torch.rand(3), want)


def test_autograd_and_other_dtypes_take_f_linear() -> None:
    packed = packed_copy(nn.Linear(8, 4))
    x = torch.randn(3, 8, requires_grad=True)
    packed(x).sum().backward()  # would fail through the packed op, which has no gradient
    assert x.grad is not None and packed.weight.grad is not None
    assert packed.onednn.packed is None
    with torch.inference_mode():
        half = packed_copy(nn.Linear(8, 4).half())
        assert half(torch.randn(3, 8).half()).dtype == torch.float16
    assert half.onednn.packed is None


def test_a_changed_weight_is_packed_again() -> None:
    packed = packed_copy(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    with torch.inference_mode():
        before = packed(x)
    with torch.no_grad():
        packed.weight.mul_(2.0)  # in place: the same address, a new version
        after = packed(x)
    torch.testing.assert_close(after, F.linear(x, packed.weight, packed.bias))
    assert not torch.allclose(before, after)


def test_deepcopy_and_restore() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    assert use_onednn_linears(model) == 2
    x = torch.randn(5, 16)
    with torch.inference_mode():
        model(x)  # packs both weights
        clone = copy.deepcopy(model)  # oneDNN's opaque tensors live outside the modules: the copy still works
        torch.testing.assert_close(clone(x), reference(x))
    assert model.state_dict().keys() == reference.state_dict().keys()
    restore_linears(clone)
    assert all(type(m) is nn.Linear for m in clone if isinstance(m, nn.Linear))


def test_loaded_models_use_it_unless_turned_off(tiny_target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = load_model(str(tiny_target), device="cpu")
    assert all(type(m) is OneDnnLinear for m in lm.model.modules() if isinstance(m, nn.Linear))
    quantized = quantize_int8(lm)  # torch's dynamic quantization finds every linear layer again
    assert not any(isinstance(m, nn.Linear) for m in quantized.model.modules())
    assert all(type(m) is OneDnnLinear for m in lm.model.modules() if isinstance(m, nn.Linear))  # lm untouched
    monkeypatch.setenv(cpu_linear.MODE_ENV, "default")
    plain = load_model(str(tiny_target), device="cpu")
    assert all(type(m) is nn.Linear for m in plain.model.modules() if isinstance(m, nn.Linear))
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(ids).logits, plain.model(ids).logits, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv(cpu_linear.MODE_ENV, "mkl")
    with pytest.raises(ValueError, match="SPECDEC_CPU_GEMM"):
        cpu_linear.wanted()


def test_stock_linears_turns_the_packed_path_off_for_a_while() -> None:
    packed = packed_copy(nn.Linear(8, 4))
    x = torch.randn(3, 8)
    with torch.inference_mode():
        with cpu_linear.stock_linears():
            torch.testing.assert_close(packed(x), F.linear(x, packed.weight, packed.bias))
            assert packed.onednn.packed is None
        packed(x)
    assert packed.onednn.packed is not None
