"""SplitGroupNorm: GroupNorm as reductions over a (N, groups, C/groups, H, W) view.

TVM lowers `nn.group_norm` on (N, C, H, W) to one kernel whose only parallel axis the GPU
schedules can find is N (the group is `c // (C/groups)`, not an axis): SD's UNet then reduces
each of its 32 groups in turn on 2 thread blocks, about 60% of the whole step on an H200
(bench/results/profile-cuda-synced-2026-11-26.md). With the groups as an axis of their own, the mean and
variance are reductions with N x groups outputs, and the rest is elementwise.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


def _split(call: relax.Call) -> relax.Expr:
    data, gamma, beta = call.args
    attrs = call.attrs
    tensor = data.ty  # the importer gives every tensor a static shape
    shape = [int(d) for d in tensor.shape]
    n, c, spatial = shape[0], shape[1], shape[2:]
    groups = int(attrs.num_groups)
    if int(attrs.channel_axis) != 1 or [int(a) for a in attrs.axes] != list(range(2, len(shape))):
        return call  # only the NC... layout the importer gives
    grouped = relax.op.reshape(data, [n, groups, c // groups, *spatial])
    axes = list(range(2, len(shape) + 1))
    # The statistics come out as (N, groups) and are reshaped for the broadcast: a reshape after
    # a reduction ends FuseOps' group, so the normalization over every element becomes one
    # elementwise kernel (with the affine and what follows) instead of running inside the mean's
    # reduction, whose only parallel axis is N x groups (32 workgroups for the VAE's 512x512
    # images: 11.3 of its 32 ms of GroupNorm in WebGPU, H200).
    stat_shape = [n, groups] + [1] * (len(shape) - 1)
    mean = relax.op.reshape(relax.op.mean(grouped, axis=axes), stat_shape)
    variance = relax.op.reshape(relax.op.variance(grouped, axis=axes), stat_shape)
    eps = relax.const(float(attrs.epsilon), tensor.dtype)
    normalized = relax.op.reshape(relax.op.divide(relax.op.subtract(grouped, mean), relax.op.sqrt(relax.op.add(variance, eps))), shape)
    per_channel = [1, c] + [1] * len(spatial)
    if attrs.scale:
        normalized = relax.op.multiply(normalized, relax.op.reshape(gamma, per_channel))
    if attrs.center:
        normalized = relax.op.add(normalized, relax.op.reshape(beta, per_channel))
    return normalized


@tvm.transform.module_pass(opt_level=0, name="SplitGroupNorm")
def split_group_norm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    pattern = is_op("relax.nn.group_norm")(wildcard(), wildcard(), wildcard())
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, lambda call, _matches: _split(call), func)
    return mod
