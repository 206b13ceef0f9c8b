"""SplitWideTensors: activations larger than a WebGPU buffer binding, kept as channel blocks.

A kernel binds each tensor whole, and a browser grants 128 MiB bindings unless the page asks
for more. SD's VAE decoder at 512x512 makes 256-channel images of 512x512 floats (256 MiB):
its last upsampler's output, that convolution's, and the GroupNorm + SiLU of the next block.
Each such tensor is computed as blocks of channels that each fit, and stays in blocks until a
convolution sums them back into a tensor that fits:

    conv2d producing a wide tensor    one convolution per block of output channels
    conv2d consuming blocks           the sum of one convolution per block of input channels
    group_norm                        per block, the groups in it (groups never straddle blocks)
    resize2d, elementwise ops         per block (a per-channel operand sliced alike)

The blocks hold the same values (the sums over input channels are reassociated, so the
convolutions after a wide tensor differ from PyTorch by rounding only). A wide tensor that
reaches an operation this pass does not know is concatenated again: the build's required
limits (stages/dist.py) then show it.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from websd.passes import static_shape

CHANNEL_AXIS = 1  # NCHW, as the importer gives


def _nbytes(expr) -> int:
    shape = static_shape(expr)
    return math.prod(shape) * tvm.runtime.DataType(expr.ty.dtype).bits // 8 if shape else 0


def channel_blocks(channels: int, nbytes: int, limit: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Equal blocks of channels (each a multiple of `multiple`) of at most `limit` bytes."""
    for count in range(2, channels // multiple + 1):
        if channels % (count * multiple) == 0 and nbytes // count <= limit:
            width = channels // count
            return [(start, start + width) for start in range(0, channels, width)]
    raise ValueError(f"a tensor of {channels} channels ({nbytes} bytes) cannot be cut into blocks of at most {limit} bytes")


def _slice(expr, axis: int, start: int, stop: int):
    return relax.op.strided_slice(expr, axes=[axis], begin=[start], end=[stop])


ELEMENTWISE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.sigmoid", "relax.nn.silu", "relax.clip"}


@relax.expr_functor.mutator
class _Splitter(relax.PyExprMutator):
    def __init__(self, mod, limit: int):
        super().__init__(mod)
        self.limit = limit
        self.blocks: dict = {}  # a wide Var -> [(block Var, (start, stop))]
        self.wholes: dict = {}  # a wide Var -> its blocks concatenated again, where needed

    def _emit(self, expr):
        return self.builder_.emit(expr)

    def _whole(self, var):
        """A blocked tensor as one tensor again (for what this pass cannot block)."""
        if var not in self.wholes:
            self.wholes[var] = self._emit(relax.op.concat([v for v, _ in self.blocks[var]], axis=CHANNEL_AXIS))
        return self.wholes[var]

    def visit_var_(self, var):
        return self._whole(var) if var in self.blocks else super().visit_var_(var)

    def visit_dataflow_var_(self, var):
        return self._whole(var) if var in self.blocks else super().visit_dataflow_var_(var)

    def _block_of(self, expr, channels: int, block: tuple[int, int]):
        """`expr`'s channels `block`: a kept block, a slice, or `expr` itself where it broadcasts
        over channels."""
        if expr in self.blocks:
            for var, span in self.blocks[expr]:
                if span == block:
                    return var
            return self._emit(_slice(self._whole(expr), CHANNEL_AXIS, *block))
        shape = static_shape(expr)
        if shape is None or len(shape) <= CHANNEL_AXIS or shape[CHANNEL_AXIS] == 1:
            return self.visit_expr(expr)
        if shape[CHANNEL_AXIS] != channels:
            raise ValueError(f"SplitWideTensors: cannot take channels {block} of a tensor of shape {shape}")
        return self._emit(_slice(self.visit_expr(expr), CHANNEL_AXIS, *block))

    def _blocks_for(self, call, multiple: int = 1) -> list[tuple[int, int]]:
        """The output's blocks: those of an argument of the same shape, else new ones."""
        shape = static_shape(call)
        for arg in call.args:
            if arg in self.blocks and static_shape(arg) == shape:
                return [span for _, span in self.blocks[arg]]
        return channel_blocks(shape[CHANNEL_AXIS], _nbytes(call), self.limit, multiple)

    def _conv(self, call, out_block):
        """conv2d for the output channels `out_block` (None: all); over a blocked input, the
        sum of one convolution per input block."""
        data, weight = call.args
        weight = self.visit_expr(weight)
        if out_block is not None:
            weight = self._emit(_slice(weight, 0, *out_block))
        if data not in self.blocks:
            return self._emit(relax.Call(call.op, [self.visit_expr(data), weight], call.attrs))
        total = None
        for var, span in self.blocks[data]:
            part = self._emit(relax.Call(call.op, [var, self._emit(_slice(weight, 1, *span))], call.attrs))
            total = part if total is None else self._emit(relax.op.add(total, part))
        return total

    def _split(self, call):
        """Blocks of `call`'s output, or None when this pass does not know how to block it."""
        name, shape = call.op.name, static_shape(call)
        channels = shape[CHANNEL_AXIS]
        if name == "relax.nn.conv2d" and _plain_conv(call):
            return [(self._conv(call, block), block) for block in self._blocks_for(call)]
        if name == "relax.nn.group_norm" and int(call.attrs.channel_axis) == CHANNEL_AXIS:
            groups = int(call.attrs.num_groups)
            data, gamma, beta = call.args
            gamma, beta = self.visit_expr(gamma), self.visit_expr(beta)
            blocks = []
            for block in self._blocks_for(call, multiple=channels // groups):
                normalized = relax.op.nn.group_norm(
                    self._block_of(data, channels, block), self._emit(_slice(gamma, 0, *block)), self._emit(_slice(beta, 0, *block)),
                    num_groups=groups * (block[1] - block[0]) // channels, channel_axis=CHANNEL_AXIS, axes=call.attrs.axes,
                    epsilon=call.attrs.epsilon, center=call.attrs.center, scale=call.attrs.scale,
                )
                blocks.append((self._emit(normalized), block))
            return blocks
        if name == "relax.image.resize2d" or name in ELEMENTWISE:
            def arg(a, block):
                return self._block_of(a, channels, block) if static_shape(a) is not None else self.visit_expr(a)

            return [
                (self._emit(relax.Call(call.op, [arg(a, block) for a in call.args], call.attrs, call.ty_args)), block)
                for block in self._blocks_for(call)
            ]
        return None

    def visit_var_binding_(self, binding):
        call = binding.value
        if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op):
            shape = static_shape(call)
            if shape and len(shape) > CHANNEL_AXIS and _nbytes(call) > self.limit:
                blocks = self._split(call)
                if blocks is not None:
                    self.blocks[binding.var] = blocks
                    return
            if call.op.name == "relax.nn.conv2d" and _plain_conv(call) and call.args[0] in self.blocks:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, self._conv(call, None)))
                return
        super().visit_var_binding_(binding)


def _plain_conv(call) -> bool:
    return int(call.attrs.groups) == 1 and call.attrs.data_layout == "NCHW" and call.attrs.kernel_layout == "OIHW"


def split_wide_tensors(limit: int):
    """The pass, for a binding limit in bytes."""

    @tvm.transform.module_pass(opt_level=0, name="SplitWideTensors")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        splitter = _Splitter(mod, limit)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = splitter.visit_expr(func)
        return mod

    return transform
