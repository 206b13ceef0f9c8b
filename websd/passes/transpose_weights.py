"""Weights stored the way the graph reads them: a matrix read only transposed is stored transposed.

PyTorch's Linear keeps its weight as (out, in) and computes x @ W^T; torch.export gives
permute_dims(W) before the matmul, and the build ran that transpose as a kernel of its own on
every call: a dispatch per Linear layer (184 of the SD 1.5 UNet step's 872, 72 of the text
encoder's 221), each copying a weight the matmul could have read as stored. Here such a weight
becomes a parameter holding W^T, and the transposes are gone from the graph.

Like split_weights, this runs where the function and its weights are both at hand: import_relax.
A transposed weight is named after its PyTorch parameter, `name.T` (relax_io.select_weights
reads it).
"""

from __future__ import annotations

import numpy as np

from websd.passes import parameter_uses, replace_weights


def transpose_read_weights(function, weights: dict[str, np.ndarray]):
    """`function`'s weights (its last len(weights) parameters, in `weights`' order) with every
    matrix whose every use is a transpose stored transposed, those uses reading it directly.
    Returns the new function and its weights, by name, in its parameter order."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    num_inputs = len(function.params) - len(weights)
    params = list(function.params)
    uses = parameter_uses(function)
    transposed = {}  # old parameter -> new one
    for i, weight in enumerate(weights.values()):
        var = params[num_inputs + i]
        if weight.ndim == 2 and uses.get(var) and all(_transpose(call) for call in uses[var]):
            transposed[var] = relax.Var(f"{var.name}_t", relax.TensorType(list(weight.shape[::-1]), str(weight.dtype)))
    if not transposed:
        return function, weights

    def read_directly(call, _matches):
        return transposed.get(call.args[0], call)

    body = rewrite_call(is_op("relax.permute_dims")(wildcard()), read_directly, function)
    return replace_weights(function, body, weights, {
        i: [(transposed[var], f"{name}.T", np.ascontiguousarray(weight.T))]
        for i, ((name, weight), var) in enumerate(zip(weights.items(), params[num_inputs:])) if var in transposed
    })


def _transpose(call) -> bool:
    """`call` swaps the two axes of a matrix: permute_dims(x) or permute_dims(x, [1, 0])."""
    if getattr(call.op, "name", None) != "relax.permute_dims":
        return False
    axes = call.attrs.axes
    return axes is None or [int(a) for a in axes] == [1, 0]
