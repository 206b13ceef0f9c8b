"""Winograd (websd/passes/winograd.py): its transforms, which convolutions it rewrites, the
kernels it makes, and their results against PyTorch on llvm. In Chromium's WebGPU:
tests/test_schedules.py runs a rewritten convolution (its transforms scheduled by
websd/schedules/winograd.py), and tests/test_browser.py compares the images of the tiny default
model, whose every 3x3 convolution of stride 1 it rewrites (below), with diffusers'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from conftest import conv_function, kernels, layout_of
from stages.legalize import passes
from websd import relax_io
from websd.passes.winograd import F2, F4, MIN_LARGE_TILES, Minimal, channel_blocks, choose
from websd.schedules.matmul import Gemm, gemm_of

# (input shape, weight shape, stride, padding): sizes no tile divides (odd, so the last tiles
# are partly outside the output), unpadded, and the convolutions the pass leaves alone.
CASES = {
    "odd": ((2, 5, 7, 9), (6, 5, 3, 3), 1, 1),
    "unpadded": ((1, 3, 8, 10), (4, 3, 3, 3), 1, 0),
    "deep": ((1, 64, 16, 16), (32, 64, 3, 3), 1, 1),
    # 2 x 8 x 9 = 144 tiles of 4x4, the last row and column of them partly outside the output
    "large_tiles": ((2, 6, 30, 34), (5, 6, 3, 3), 1, 1),
    # U (16 x 64 x 16 floats, 64 KiB) larger than V (4 KiB) and M (16 KiB), as at SD's 8x8 latents
    "many_filters": ((1, 16, 4, 4), (64, 16, 3, 3), 1, 1),
    # V and M (16 x 4 channels x 8 x 8 tiles: 16 KiB) larger than U, as in SD's VAE at 512x512
    "large_image": ((1, 4, 15, 16), (4, 4, 3, 3), 1, 1),
    "strided": ((1, 8, 9, 9), (8, 8, 3, 3), 2, 1),
    "pointwise": ((1, 8, 9, 9), (8, 8, 1, 1), 1, 0),
}
# the binding limit each case is built with: "many_filters" in 2 blocks of output channels,
# "large_image" an implicit GEMM (V does not fit)
LIMITS = {"many_filters": 1 << 15, "large_image": 1 << 12}


def module(name: str, binding_limit: int = 1 << 30) -> tvm.IRModule:
    """SiLU -> conv2d -> + bias, as in the UNet's resnet blocks, legalized by the build's passes."""
    return tvm.transform.Sequential(passes(binding_limit))(conv_function(*CASES[name], before=relax.op.nn.silu))


@pytest.mark.parametrize("f", [F2, F4], ids=["F2", "F4"])
def test_transforms_compute_a_3x3_correlation(f: Minimal) -> None:
    # Y = A^T [(G g G^T) * (B^T d B)] A: m x m outputs of an (m + 2) x (m + 2) block, as the
    # pass's constants are
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((f.block, f.block)), rng.standard_normal((3, 3))
    a_t, b_t, g_m = (np.array(m, dtype=np.float64) for m in (f.a_t, f.b_t, f.g))
    assert a_t.shape == (f.tile, f.block) and b_t.shape == (f.block, f.block) and g_m.shape == (f.block, 3)
    got = a_t @ ((g_m @ g @ g_m.T) * (b_t @ d @ b_t.T)) @ a_t.T
    want = [[np.sum(d[y:y + 3, x:x + 3] * g) for x in range(f.tile)] for y in range(f.tile)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_3x3_convolutions_become_16_gemms_between_elementwise_transforms() -> None:
    mod = kernels(module("odd"))
    # 16 products of 6 x 5 filters by 5 channels x (2 images x 4 x 5 tiles)
    assert gemm_of(mod["conv2d_winograd_product"]) == Gemm(16, 6, 40, 5)
    # the bias add fuses into the output's transform, as into a convolution (its reshape becomes a
    # view in the build); the producer (SiLU) stays a kernel of its own, which the input's
    # transform reads 4 times over
    assert set(mod) == {"silu", "conv2d_winograd_data", "conv2d_winograd_filter", "conv2d_winograd_product", "reshape",
                        "fused_conv2d_winograd_output_add"}


def test_large_images_become_36_gemms() -> None:
    mod = kernels(module("large_tiles"))
    # 36 products of 5 x 6 filters by 6 channels x (2 images x 8 x 9 tiles)
    assert gemm_of(mod["conv2d_winograd_product"]) == Gemm(36, 5, 144, 6)


def test_filters_larger_than_a_binding_make_blocks_of_output_channels() -> None:
    mod = kernels(module("many_filters", LIMITS["many_filters"]))
    # a filter transform per block (each its channels), the same GEMM for both
    assert {"conv2d_winograd_filter", "conv2d_winograd_filter1"} < set(mod)
    assert gemm_of(mod["conv2d_winograd_product"]) == Gemm(16, 32, 4, 16)
    # one output transform of both blocks, with the bias
    assert "fused_conv2d_winograd_output_add" in mod


def test_blocks_of_output_channels_as_bindings_allow() -> None:
    assert channel_blocks(F2, (1, 16, 4, 4), (1, 64, 4, 4), 1 << 15) == 2  # "many_filters": U of 64 KiB
    assert channel_blocks(F2, (1, 16, 4, 4), (1, 64, 4, 4), 1 << 10) == 0  # V (4 KiB) does not fit
    assert channel_blocks(F2, (1, 4, 15, 16), (1, 4, 15, 16), 1 << 12) == 0  # "large_image": V of 16 KiB
    assert channel_blocks(F2, (1, 4, 15, 16), (1, 4, 15, 16), 1 << 14) == 1


def test_large_images_take_4x4_tiles() -> None:
    limit = 128 << 20  # WebGPU's default binding
    # SD 1.5's UNet at batch 2: 4x4 tiles from 32x32 latents on (128 tiles), 2x2 below
    for side, f in ((64, F4), (32, F4), (16, F2), (8, F2)):
        assert choose((2, 320, side, side), (2, 320, side, side), limit) == (f, 1)
    assert 2 * 8 * 8 == MIN_LARGE_TILES
    # 1280 filters of 1280 channels: U in 4x4 tiles (36 x 1280 x 1280 floats) in 2 blocks
    assert choose((2, 1280, 32, 32), (2, 1280, 32, 32), limit) == (F4, 2)
    # the VAE's 512 channels at 128x128 in 4x4 tiles; at 256x256 (256 channels) V fits in
    # neither (36 x 256 x 64 x 64 floats: 144 MiB)
    assert choose((1, 512, 128, 128), (1, 512, 128, 128), limit) == (F4, 1)
    assert choose((1, 256, 256, 256), (1, 256, 256, 256), limit) is None


@pytest.mark.parametrize("name", ["strided", "pointwise", "large_image"])
def test_other_convolutions_stay_implicit_gemms(name) -> None:
    assert not any("winograd" in k for k in kernels(module(name, LIMITS.get(name, 1 << 30))))


@pytest.mark.parametrize("name", CASES)
def test_results_match_pytorch_on_llvm(name) -> None:
    x_shape, w_shape, stride, padding = CASES[name]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in (x_shape, w_shape, (w_shape[0],))]
    vm = relax.VirtualMachine(tvm.compile(module(name, LIMITS.get(name, 1 << 30)), "llvm"), tvm.cpu())
    got = vm["main"](*map(tvm.runtime.tensor, arrays)).numpy()
    x, w, b = (torch.from_numpy(a).double() for a in arrays)
    want = torch.nn.functional.conv2d(torch.nn.functional.silu(x), w, b, stride=stride, padding=padding).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_tiny_default_model_has_winograd_convolutions(default_build) -> None:
    # the UNet's 3x3 convolutions at 8x8 and 4x4 latents, none left to SplitK
    unet = kernels(relax_io.load_module(layout_of(default_build).legalized("unet")))
    assert Gemm(16, 64, 4, 128) in {gemm_of(f) for name, f in unet.items() if "winograd_product" in name}
    assert not any(name.startswith("conv2d_split") for name in unet)
