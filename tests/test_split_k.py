"""SplitK (websd/passes/split_k.py): which convolutions and matmuls it splits, the kernels it
makes, and their results against PyTorch on llvm. In Chromium's WebGPU: tests/test_schedules.py
runs a split convolution and a split matmul there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from conftest import conv_function, kernels
from stages.legalize import passes
from websd.schedules.matmul import Gemm, gemm_of
from websd.passes.split_k import matmul_splits_for, splits_for

# (input shape, weight shape, stride, padding): deep convolutions with small outputs, as at
# SD's 16x16 and 8x8 latents (a 1x1 one, as its resnets' shortcuts, and a strided one, as in its
# downsamplers: 3x3 convolutions of stride 1 become Winograd's GEMMs), and a wide one.
CASES = {
    "deep": ((1, 2304, 4, 4), (32, 2304, 1, 1), 1, 0),
    "deep_strided": ((2, 256, 9, 9), (24, 256, 3, 3), 2, 1),
    "wide": ((1, 16, 40, 40), (64, 16, 1, 1), 1, 0),
}


def module(name: str) -> tvm.IRModule:
    """conv2d + bias, squared, legalized by the build's passes."""
    x_shape, w_shape, stride, padding = CASES[name]
    squared = conv_function(x_shape, w_shape, stride, padding, after=lambda out: relax.op.multiply(out, out))
    return tvm.transform.Sequential(passes())(squared)


def test_sd15_convolutions_split_as_measured() -> None:
    # rows (batch x output pixels), output channels, depth (input channels x 3 x 3), input channels
    assert splits_for(128, 1280, 11520, 1280) == 16  # 8x8 latents: 40 tiles of 64x64 -> 640
    assert splits_for(512, 1280, 11520, 1280) == 4  # 16x16: 160 -> 640
    assert splits_for(128, 1280, 2560, 2560) == 4  # 1x1, shallow: each split keeps 640 deep
    assert splits_for(8192, 320, 2880, 320) == 1  # 64x64 latents: 640 tiles already


def test_deep_convolutions_become_a_batched_gemm_and_an_elementwise_sum() -> None:
    mod = kernels(module("deep"))
    # 2304 deep, 16 output pixels x 32 channels: one tile -> 4 splits of 576
    assert gemm_of(mod["conv2d_split"]) == Gemm(4, 16, 32, 576, convolution=True)
    # the bias and the epilogue fuse into the sum, not into the partial products
    assert set(mod) == {"conv2d_split", "fused_sum_splits_reshape_add_multiply"}
    assert "fused_conv2d_add_multiply" in kernels(module("wide"))  # unsplit: 16 deep


def test_deep_matmuls_split_as_the_32x32_tiles_need() -> None:
    # rows, columns, depth: the text encoder's second MLP layer (77 tokens), the UNet's
    # time-embedding layers (batch 2) and a projection at the 8x8 latents (2 x 64 tokens)
    assert matmul_splits_for(77, 768, 3072) == 4  # 72 tiles of 32x32 -> 288
    assert matmul_splits_for(2, 1280, 1280) == 2  # 40 -> 80, each split at least 576 deep
    assert matmul_splits_for(128, 1280, 5120) == 2  # 160 -> 320
    assert matmul_splits_for(77, 768, 768) == 1  # too shallow to split
    assert matmul_splits_for(8192, 320, 1280) == 1  # 2560 tiles already


def matmul_module() -> tvm.IRModule:
    """A layer as the importer gives it: x @ weight.T + bias, 3072 deep on 77 rows."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 77, 3072), "float32"))
    w, b = relax.Var("w", relax.TensorType((768, 3072), "float32")), relax.Var("b", relax.TensorType((768,), "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(relax.op.matmul(x, relax.op.permute_dims(w)), b))
        bb.emit_func_output(out)
    return tvm.transform.Sequential(passes())(bb.get())


def test_deep_matmuls_become_a_batched_gemm_and_an_elementwise_sum() -> None:
    mod = kernels(matmul_module())
    assert gemm_of(mod["matmul_split"]) == Gemm(4, 77, 768, 768)
    assert "fused_sum_splits_add" in mod  # the bias fuses into the sum


def test_split_matmul_matches_pytorch_on_llvm() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in ((1, 77, 3072), (768, 3072), (768,))]
    vm = relax.VirtualMachine(tvm.compile(matmul_module(), "llvm"), tvm.cpu())
    got = vm["main"](*map(tvm.runtime.tensor, arrays)).numpy()
    x, w, b = (torch.from_numpy(a).double() for a in arrays)
    np.testing.assert_allclose(got, (x @ w.T + b).numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", CASES)
def test_results_match_pytorch_on_llvm(name) -> None:
    x_shape, w_shape, stride, padding = CASES[name]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in (x_shape, w_shape, (w_shape[0],))]
    vm = relax.VirtualMachine(tvm.compile(module(name), "llvm"), tvm.cpu())
    got = vm["main"](*map(tvm.runtime.tensor, arrays)).numpy()
    x, w, b = (torch.from_numpy(a).double() for a in arrays)
    want = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding).square().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
