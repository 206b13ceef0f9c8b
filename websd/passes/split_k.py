"""SplitK: deep products with few output tiles split their reduction across workgroups.

Each workgroup of the matmul rule (websd/schedules/matmul.py) computes one tile of a GEMM's
output, however deep its reduction. SD 1.5's convolutions at 16x16 and 8x8 latents have
small outputs and deep reductions: at batch 2, 128 rows x 1280 columns x 11520 (1280
channels x 3 x 3) is 40 tiles of 64x64 for a GPU of 132 multiprocessors, and they ran at 2
TFLOP/s where the UNet's wide convolutions reach 12 (H200, bench/results/profile-unet.md).
(Winograd's pass, before this one, now takes their 3x3 convolutions of stride 1; SplitK splits
the strided and 1x1 ones left.) Such a convolution becomes two kernels:

    partial[n, s, o, y, x] = sum over the input channels of split s (and the 3x3 window)
    out[n, o, y, x]        = partial[n, 0, o, y, x] + ... + partial[n, S - 1, o, y, x]

The first is still one implicit GEMM for the matmul rule, batched over the S splits (S times
the workgroups); the second is elementwise, so FuseOps fuses the convolution's epilogue (bias,
residual, scale) into it. Matmuls by a weight matrix split the same way (partial[s, ..., n]):
the text encoder's second MLP layer, 77 rows x 768 x 3072 deep, is 72 tiles of 32x32. The
sums are reassociated: results differ from PyTorch's by rounding only.
"""

from __future__ import annotations

import functools
import operator

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from websd.passes import conv2d_shapes, static_shape
from websd.schedules.matmul import MIN_WORKGROUPS, TILES, Gemm, workgroups

# Split until the 64x64 tiles fill a large GPU twice over (four workgroups a multiprocessor of
# an H100 or H200, where the UNet's wide convolutions have 640 and more) ...
FILL = 2 * MIN_WORKGROUPS
# ... while each split still reduces over at least this much (64 channels of a 3x3 window).
MIN_SPLIT_DEPTH = 576


@functools.cache
def _op(name: str):
    return tvm.ir.Op.get(name)


def _splits(rows: int, cols: int, depth: int, divides: int, tile: str, fill: int) -> int:
    """Doubling splits (a power of two that divides `divides`) while the product's tiles of
    `tile` make fewer than `fill` workgroups and each split stays MIN_SPLIT_DEPTH deep."""
    splits = 1
    while (workgroups(Gemm(splits, rows, cols, depth // splits), TILES[tile]) < fill
           and depth // (2 * splits) >= MIN_SPLIT_DEPTH and divides % (2 * splits) == 0):
        splits *= 2
    return splits


def splits_for(rows: int, cols: int, depth: int, channels: int) -> int:
    """The number of splits of a convolution's input channels: a power of two that divides them."""
    return _splits(rows, cols, depth, channels, "64x64", FILL)


def matmul_splits_for(rows: int, cols: int, depth: int) -> int:
    """The number of splits of a matmul's depth: a power of two that divides it, until the 32x32
    tiles the matmul rule gives such small products make MIN_WORKGROUPS."""
    return _splits(rows, cols, depth, depth, "32x32", MIN_WORKGROUPS)


def _partial_conv2d(data, weight, splits: int, out_shape, strides, padding, dilation):
    from tvm import te, topi

    channels = data.shape[1] // splits
    top, left, bottom, right = padding
    padded = topi.nn.pad(data, [0, 0, top, left], [0, 0, bottom, right], name="pad")
    c = te.reduce_axis((0, channels), "c")
    ky = te.reduce_axis((0, weight.shape[2]), "ky")
    kx = te.reduce_axis((0, weight.shape[3]), "kx")
    n, o, height, width = out_shape
    return te.compute(
        (n, splits, o, height, width),
        lambda b, s, f, y, x: te.sum(
            padded[b, s * channels + c, y * strides[0] + ky * dilation[0], x * strides[1] + kx * dilation[1]]
            * weight[f, s * channels + c, ky, kx], axis=[c, ky, kx]),
        name="conv2d_split",
    )


def _partial_matmul(x, weight, splits: int):
    from tvm import te

    depth = x.shape[-1] // splits
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (splits, *x.shape[:-1], weight.shape[1]),
        lambda s, *index: te.sum(x[(*index[:-1], s * depth + k)] * weight[s * depth + k, index[-1]], axis=k),
        name="matmul_split",
    )


def _sum_splits(partial, axis: int):
    from tvm import te

    splits = int(partial.shape[axis])
    shape = [*partial.shape[:axis], *partial.shape[axis + 1:]]
    return te.compute(shape,
                      lambda *index: functools.reduce(operator.add, (partial[(*index[:axis], s, *index[axis:])] for s in range(splits))),
                      name="sum_splits")


@mutator
class _Splitter(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not isinstance(call, relax.Call):
            return call
        if call.op.same_as(_op("relax.nn.conv2d")):
            return self.split_conv2d(call)
        if call.op.same_as(_op("relax.matmul")):
            return self.split_matmul(call)
        return call

    def split_conv2d(self, call):
        data, weight = call.args
        attrs = call.attrs
        if (shapes := conv2d_shapes(call)) is None:
            return call
        (_, channels, _, _), (_, _, ky, kx), (n, o, height, width) = shapes
        splits = splits_for(n * height * width, o, channels * ky * kx, channels)
        if splits == 1:
            return call
        ints = lambda values: [int(v) for v in values]  # noqa: E731
        partial = self.builder_.emit(self.builder_.call_te(
            _partial_conv2d, data, weight, splits, shapes[2], ints(attrs.strides), ints(attrs.padding), ints(attrs.dilation),
            primfunc_name_hint="conv2d_split"))
        return self.builder_.call_te(_sum_splits, partial, 1, primfunc_name_hint="sum_splits")

    def split_matmul(self, call):
        """x (..., K) @ weight (K, N), weight a matrix (every matmul by a layer's weight)."""
        x, weight = call.args
        x_shape, w_shape = static_shape(x), static_shape(weight)
        if (x_shape is None or w_shape is None or len(w_shape) != 2 or len(x_shape) < 2
                or x.ty.dtype != "float32" or call.ty.dtype != "float32"):
            return call
        splits = matmul_splits_for(functools.reduce(operator.mul, x_shape[:-1]), w_shape[1], w_shape[0])
        if splits == 1:
            return call
        partial = self.builder_.emit(self.builder_.call_te(_partial_matmul, x, weight, splits, primfunc_name_hint="matmul_split"))
        return self.builder_.call_te(_sum_splits, partial, 0, primfunc_name_hint="sum_splits")


@tvm.transform.module_pass(opt_level=0, name="SplitK")
def split_k(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    splitter = _Splitter(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            splitter.builder_.update_func(gv, splitter.visit_expr(func))
    return splitter.builder_.get()
