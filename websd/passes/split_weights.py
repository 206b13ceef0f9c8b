"""Split embedding tables that are larger than a WebGPU buffer binding.

A browser grants 128 MiB storage-buffer bindings unless a page asks for more (which many
adapters cannot give), and a kernel binds each weight whole. CLIP's token embedding is
49408 x 768 floats (151 MB): we store it as column blocks that each fit, and the lookup
`take(table, ids)` becomes one lookup per block, concatenated along the embedding axis (the
same values; the concat fuses with the lookups into one kernel).

The weights are the function's trailing parameters (the importer's keep_params_as_input), so
this runs where both the function and its weights are at hand: import_relax. A block's name is
the PyTorch name with the column range, `name[:, a:b]` (relax_io.select_weights reads it).
"""

from __future__ import annotations

import math

import numpy as np

from websd.passes import parameter_uses, replace_weights


def column_blocks(shape: tuple[int, ...], itemsize: int, limit: int) -> list[tuple[int, int]]:
    """Column ranges of a 2-D table whose blocks each take at most `limit` bytes."""
    rows, cols = shape
    per_block = limit // (rows * itemsize)
    if per_block < 1:
        raise ValueError(f"a table of {rows} rows does not fit {limit} bytes even one column at a time")
    blocks = math.ceil(cols / per_block)
    width = math.ceil(cols / blocks)  # even blocks
    return [(start, min(start + width, cols)) for start in range(0, cols, width)]


def split_wide_tables(function, weights: dict[str, np.ndarray], limit: int):
    """`function`'s weights (its last len(weights) parameters, in `weights`' order) with every
    table over `limit` bytes that is only ever looked up by row split into column blocks.
    Returns the new function and its weights, by name, in its parameter order."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    num_inputs = len(function.params) - len(weights)
    params = list(function.params)
    uses = parameter_uses(function)
    blocks = {}  # param index -> [(var, (start, stop))]
    for i, (name, weight) in enumerate(weights.items()):
        var = params[num_inputs + i]
        if weight.nbytes <= limit or weight.ndim != 2 or not uses.get(var) or not all(_row_lookup(call, var) for call in uses[var]):
            continue
        blocks[i] = [
            (relax.Var(f"{var.name}_cols{start}", relax.TensorType([weight.shape[0], stop - start], str(weight.dtype))), (start, stop))
            for start, stop in column_blocks(weight.shape, weight.itemsize, limit)
        ]
    if not blocks:
        return function, weights

    replacements = {params[num_inputs + i]: parts for i, parts in blocks.items()}

    def lookup(call, _matches):
        table = call.args[0]
        if table not in replacements:
            return call
        return relax.op.concat([relax.op.take(var, call.args[1], axis=0) for var, _ in replacements[table]], axis=-1)

    body = rewrite_call(is_op("relax.take")(wildcard(), wildcard()), lookup, function)
    return replace_weights(function, body, weights, {
        i: [(var, f"{name}[:, {start}:{stop}]", np.ascontiguousarray(weight[:, start:stop])) for var, (start, stop) in blocks[i]]
        for i, (name, weight) in enumerate(weights.items()) if i in blocks
    })


def _row_lookup(call, var) -> bool:
    """`call` is take(var, indices, axis=0)."""
    return (
        getattr(call.op, "name", None) == "relax.take"
        and call.args[0].same_as(var)
        and call.attrs.axis is not None
        and int(call.attrs.axis) == 0
    )
