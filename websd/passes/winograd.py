"""Winograd: 3x3 convolutions as matrix products over their channels, F(2x2, 3x3) and F(4x4, 3x3).

A 3x3 convolution computes each m x m tile of its output from the (m + 2) x (m + 2) block of
input around it, 9 m^2 multiply-adds per input and output channel. Winograd's minimal filtering
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015) gets the same
outputs from (m + 2)^2 products, between linear transforms of the input block d and of the
filter g:

    y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise, (m + 2) x (m + 2))

Summed over the input channels, the products are (m + 2)^2 independent matrix products, so a
convolution becomes four kernels:

    U[e, o, c] = (G g[o, c] G^T)[e]                     the filters, transformed (each call)
    V[e, c, p] = (B^T d[c, p] B)[e]                     the input's block around tile p
    M[e, o, p] = sum over c of U[e, o, c] V[e, c, p]    batched GEMMs: the matmul rule's
    out[n, o, m ty + r, m tx + s] = (A^T M[:, o, p] A)[r, s]

F(2x2, 3x3) (16 products for 4 outputs) does 2.25 times fewer multiply-adds than the
convolution's implicit GEMM, F(4x4, 3x3) (36 for 16) 4 times fewer, in a plain batched GEMM (no
gather through the window). F(4x4, 3x3) makes 4 times fewer tiles, the GEMMs' columns: it takes
the convolutions whose images still make MIN_LARGE_TILES of them (SD's latents from 32x32 on),
and its transformed tensors are smaller per output, so it also fits bindings where F(2x2, 3x3)
does not (the VAE's 512 channels at 128x128). Each transform's entry is the sum of the nonzero
terms of its row of the transform; websd/schedules/winograd.py gives a thread a whole block of
U or V. The input's transform is opaque to FuseOps: a producer fused into it (GroupNorm + SiLU)
would be computed again for each block each input value is in. The output's transform has a
convolution's pattern: the epilogue (bias, residual, scale) fuses into it. F(2x2, 3x3)'s
coefficients are 0, 1, 1/2 and their negatives; F(4x4, 3x3)'s interpolate at 0, +-1, +-2 (up to
8 and down to 1/24): the results differ from PyTorch's by rounding only, a little more for
F(4x4, 3x3).

SD 1.5 on an H200 (bench/results/winograd/): F(2x2, 3x3) took the UNet's convolutions from 49.0
to 27.2 ms a step in WebGPU, 34.8 to 23.2 natively, at the latents' every size (from 32x32 on
only: 90.0 against 82.8 ms a step); F(4x4, 3x3) from 32x32 on, from 25.9 to 23.0 in WebGPU and
22.7 to 20.0 natively, and the VAE decoder's from 85.2 to 80.2 ms (1057-f4/). The filters'
transform runs on every call (2 ms a step): once at load time it would keep 16/9 (F(2x2, 3x3))
or 4 times (F(4x4, 3x3)) every 3x3 weight on the GPU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from websd.passes import conv2d_shapes, static_shape

KERNEL = 3  # the filter's side


@dataclass(frozen=True)
class Minimal:
    """F(tile x tile, 3x3): outputs per tile side and the transforms (Lavin and Gray, 4.1, 4.2)."""

    tile: int
    b_t: tuple
    g: tuple
    a_t: tuple

    @property
    def block(self) -> int:
        """The side of the input block a tile reads, and of the transformed blocks."""
        return self.tile + KERNEL - 1

    def tiles(self, height: int, width: int) -> tuple[int, int]:
        return -(-height // self.tile), -(-width // self.tile)


F2 = Minimal(2, b_t=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
             g=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
             a_t=((1, 1, 1, 0), (0, 1, -1, -1)))
F4 = Minimal(4, b_t=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                     (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
             g=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
                (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
             a_t=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)))
# F(4x4, 3x3) where its tiles (the GEMMs' columns, over the batch) are at least this many: two
# 64-wide tiles of the matmul rule (SD 1.5 at batch 2: latents of 32x32 and 64x64; 16x16 would
# give 32 columns, as F(2x2, 3x3) at 8x8, the products that ran at half the others' speed).
MIN_LARGE_TILES = 128
OUT_ELEMWISE_FUSABLE, OPAQUE = 4, 8  # relax's OpPatternKind::kOutEWiseFusable, kOpaque


@functools.cache
def _conv2d_op():
    return tvm.ir.Op.get("relax.nn.conv2d")


def _pick(index, values: list, dtype: str):
    """values[index] for an index expression: a chain of selects (a constant where all agree)."""
    from tvm import tirx

    expr = tirx.const(values[-1], dtype)
    for i in reversed(range(len(values) - 1)):
        if values[i] != values[-1] or not isinstance(expr, tirx.IntImm | tirx.FloatImm):
            expr = tirx.Select(index == i, tirx.const(values[i], dtype), expr)
    return expr


def _row_terms(matrix, row) -> list:
    """Row `row` (an index expression) of a constant matrix as its nonzero terms, (column,
    coefficient) expression pairs: the k-th is the k-th nonzero of that row (a row with fewer
    repeats column 0 with coefficient 0)."""
    nonzeros = [[(j, v) for j, v in enumerate(r) if v] for r in matrix]
    width = max(len(r) for r in nonzeros)
    terms = []
    for k in range(width):
        entries = [r[k] if k < len(r) else (0, 0) for r in nonzeros]
        terms.append((_pick(row, [j for j, _ in entries], str(row.ty)), _pick(row, [float(v) for _, v in entries], "float32")))
    return terms


def _transform(matrix, row, col, read):
    """(matrix X matrix^T)[row, col] of the block `read(i, j)`: the sum of its nonzero terms."""
    return functools.reduce(lambda a, b: a + b, (ci * cj * read(i, j) for i, ci in _row_terms(matrix, row)
                                                 for j, cj in _row_terms(matrix, col)))


def _filter_transform(f: Minimal, weight, start: int, out_channels: int):
    """U of the filters of output channels start, ..., start + out_channels - 1."""
    from tvm import te

    return te.compute(
        (f.block * f.block, out_channels, weight.shape[1]),
        lambda e, o, c: _transform(f.g, e // f.block, e % f.block, lambda i, j: weight[start + o, c, i, j]),
        name="winograd_filter",
    )


def _data_transform(f: Minimal, data, out_size: tuple[int, int], padding: tuple[int, int]):
    """V of the input's blocks under the output's tiles. The blocks are a stage of their own
    (values of the input, zero outside it), which the schedule rule keeps in registers."""
    from tvm import te, tirx

    n, channels, height, width = (int(d) for d in data.shape)
    rows, cols = f.tiles(*out_size)

    def value(c, p, i, j):
        y = p // cols % rows * f.tile + i - padding[0]
        x = p % cols * f.tile + j - padding[1]
        inside = tirx.all(0 <= y, y < height, 0 <= x, x < width)
        return tirx.if_then_else(inside, data[p // (rows * cols), c, y, x], tirx.const(0, data.dtype))

    blocks = te.compute((channels, n * rows * cols, f.block, f.block), value, name="winograd_blocks")
    return te.compute(
        (f.block * f.block, channels, n * rows * cols),
        lambda e, c, p: _transform(f.b_t, e // f.block, e % f.block, lambda i, j: blocks[c, p, i, j]),
        name="winograd_data",
    )


def _product(filters, data):
    from tvm import te

    c = te.reduce_axis((0, filters.shape[2]), "c")
    return te.compute((filters.shape[0], filters.shape[1], data.shape[2]),
                      lambda e, o, p: te.sum(filters[e, o, c] * data[e, c, p], axis=c), name="winograd_product")


def _output_transform(f: Minimal, products: list, out_shape):
    """The output from the products M of its blocks of output channels, in order."""
    from tvm import te, tirx

    n, out_channels, height, width = out_shape
    rows, cols = f.tiles(height, width)
    step = out_channels // len(products)

    def value(b, o, y, x):
        p = (b * rows + y // f.tile) * cols + x // f.tile
        blocks = [_transform(f.a_t, y % f.tile, x % f.tile, lambda eps, nu, m=m: m[eps * f.block + nu, o % step, p]) for m in products]
        # a branch, not a select: one block is read
        return functools.reduce(lambda rest, k: tirx.if_then_else(o // step == k, blocks[k], rest), reversed(range(len(blocks) - 1)), blocks[-1])

    return te.compute(out_shape, value, name="winograd_output")


def channel_blocks(f: Minimal, data_shape, out_shape, binding_limit: int) -> int:
    """The fewest blocks of output channels (a divisor of them, each its own U and GEMM: the
    UNet's 2560-channel filters) such that U, V and M each fit a binding of `binding_limit`
    bytes; 0 if there are none (the VAE's images at 256x256 and 512x512, whose V would need blocks
    of rows: their outputs in row blocks, all alive at once, took the VAE decoder's activations
    from 0.64 to 1.42 GiB)."""
    n, channels = data_shape[:2]
    out_channels, height, width = out_shape[1:]
    tiles = n * math.prod(f.tiles(height, width))
    entries = f.block * f.block * 4  # bytes of a tile's or a filter's transformed block
    if entries * channels * tiles > binding_limit:
        return 0
    return next((k for k in range(1, out_channels + 1) if out_channels % k == 0
                 and entries * out_channels // k * max(channels, tiles) <= binding_limit), 0)


def choose(data_shape, out_shape, binding_limit: int) -> tuple[Minimal, int] | None:
    """F(4x4, 3x3) where its tiles make MIN_LARGE_TILES and its tensors fit, else F(2x2, 3x3)
    where its tensors fit, with their channel_blocks; None: the convolution stays as it is."""
    for f in (F4, F2):
        if f is F4 and data_shape[0] * math.prod(f.tiles(*out_shape[2:])) < MIN_LARGE_TILES:
            continue
        if blocks := channel_blocks(f, data_shape, out_shape, binding_limit):
            return f, blocks
    return None


@mutator
class _Winograd(PyExprMutator):
    def __init__(self, mod, binding_limit: int):
        super().__init__(mod)
        self.binding_limit = binding_limit

    def choose(self, call) -> tuple[Minimal, int] | None:
        """`choose` for the convolution `call`; None: it stays as it is."""
        attrs = call.attrs
        if (shapes := conv2d_shapes(call)) is None:
            return None
        top, left, bottom, right = (int(v) for v in attrs.padding)
        if (shapes[1][2:] != [KERNEL, KERNEL] or top != bottom or left != right
                or [int(v) for v in (*attrs.strides, *attrs.dilation)] != [1, 1, 1, 1]):
            return None
        return choose(shapes[0], shapes[2], self.binding_limit)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not (isinstance(call, relax.Call) and call.op.same_as(_conv2d_op())) or not (chosen := self.choose(call)):
            return call
        f, blocks = chosen
        data, weight = call.args
        out_shape = static_shape(call)
        padding = (int(call.attrs.padding[0]), int(call.attrs.padding[1]))
        builder = self.builder_
        # opaque: FuseOps fuses no producer into it, where each input value would be computed again
        # for each block it is in
        data_blocks = builder.emit(builder.call_te(functools.partial(_data_transform, f), data, out_shape[2:], padding,
                                                   primfunc_name_hint="conv2d_winograd_data", primfunc_attrs={"op_pattern": OPAQUE}))
        step = out_shape[1] // blocks
        products = []
        for start in range(0, out_shape[1], step):
            filters = builder.emit(builder.call_te(functools.partial(_filter_transform, f), weight, start, step, primfunc_name_hint="conv2d_winograd_filter"))
            products.append(builder.emit(builder.call_te(_product, filters, data_blocks, primfunc_name_hint="conv2d_winograd_product")))
        # a convolution's pattern: FuseOps fuses its epilogue (bias, residual) into it but no other
        # convolution's output transform (SplitWideTensors' sums of convolutions), which would read
        # more products than a shader binds by default
        return builder.call_te(functools.partial(_output_transform, f), products, out_shape, primfunc_name_hint="conv2d_winograd_output",
                               primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})


def winograd(binding_limit: int):
    """The pass: every 3x3 convolution of stride 1 whose transformed tensors fit bindings of
    `binding_limit` bytes (its filters in blocks of output channels where they must), with the
    larger tiles where its image is large enough (`choose`)."""

    @tvm.transform.module_pass(opt_level=0, name="Winograd")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Winograd(mod, binding_limit)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return transform
