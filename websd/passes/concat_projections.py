"""Projections of one input concatenated: x @ W_q, x @ W_k, x @ W_v as x @ [W_q W_k W_v].

An attention projects the same tensor three times (self-attention's query, key and value; a
cross-attention's key and value project the text): three matrix products, each a kernel that
reads x, each too small to keep a large GPU busy (SD 1.5's 8192 x 320 x 320 ran at 11 TFLOP/s
on an H200, its wide products at 20). Here the matrices of one module (PyTorch's names: the
Linear layers of one attention) that multiply the same tensor, each read only there, become
one stored side by side, and each product a slice of the columns of the one product (their
biases, where each has one, likewise). FuseAttention reads its query, key and value as such
slices in place (websd/passes/attention.py), so the slices cost nothing. (Across modules, the
UNet's 32 key and value projections of the text would be one product, but each attention would
then read its own columns of it: a kernel of its own for each, 65 more shaders to compile.)

Like transpose_weights, this runs where the function and its weights are both at hand:
import_relax, after it (the matrices are stored (in, out)). A concatenated weight is named
after its parts, `name_a|name_b|...` (relax_io.select_weights reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from websd.passes import parameter_uses, replace_weights


@dataclass
class _Group:
    """Products of one input by one module's weight matrices of one depth, in order."""

    x: object
    products: list = field(default_factory=list)  # the matmul bindings' vars
    weights: list = field(default_factory=list)  # their matrices' weight indices
    biases: list = field(default_factory=list)  # per product, its bias add: (binding var, weight index), or None


def concatenate_projections(function, weights: dict[str, np.ndarray], limit: int):
    """`function`'s weights (its last len(weights) parameters, in `weights`' order) with the
    matrices that multiply one tensor concatenated (while the result fits `limit` bytes).
    Returns the new function and its weights, by name, in its parameter order."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    num_inputs = len(function.params) - len(weights)
    params = list(function.params)
    index = {var: i for i, var in enumerate(params[num_inputs:])}
    names, arrays = list(weights), list(weights.values())
    uses = parameter_uses(function)
    bindings = [b for block in function.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    users: dict = {}
    for binding in bindings:
        for var in relax.analysis.free_vars(binding.value):
            users.setdefault(var, []).append(binding)

    def only_param(expr, ndim: int) -> int | None:
        """The weight index of a parameter of `ndim` dimensions used once, else None."""
        i = index.get(expr)
        return i if i is not None and arrays[i].ndim == ndim and len(uses.get(expr, [])) == 1 else None

    candidates: dict = {}
    for binding in bindings:
        value = binding.value
        if not (isinstance(value, relax.Call) and getattr(value.op, "name", None) == "relax.matmul"):
            continue
        x, w = value.args
        if (i := only_param(w, 2)) is None:
            continue
        group = candidates.setdefault((x, arrays[i].shape[0], arrays[i].dtype, _module(names[i])), _Group(x))
        group.products.append(binding.var)
        group.weights.append(i)
        group.biases.append(_bias_add(binding.var, users, only_param))
    groups = []
    for group in candidates.values():
        if len(group.products) < 2 or sum(arrays[i].nbytes for i in group.weights) > limit:
            continue
        if not all(group.biases):
            if any(group.biases):
                continue  # some with a bias, some without: left as they are
            group.biases = []
        groups.append(group)
    if not groups:
        return function, weights

    # the new parameters: each group's concatenation where its first weight was, the rest dropped
    merged = {}  # first weight index -> (new parameter, name, array)
    dropped = set()
    for group in groups:
        for indices, suffix in ((group.weights, ""), ([i for _, i in group.biases], "_bias")):
            if not indices:
                continue
            array = np.concatenate([arrays[i] for i in indices], axis=-1)
            name = "|".join(names[i] for i in indices)
            var = relax.Var(f"{params[num_inputs + indices[0]].name}_concat{suffix}", relax.TensorType(list(array.shape), str(array.dtype)))
            merged[indices[0]] = (var, name, array)
            dropped.update(indices[1:])
    result_of = {}  # binding var -> (its group, first column, end column): the slice it becomes
    skipped = set()  # bindings the concatenated product replaces
    for group in groups:
        start = 0
        for k, (product, i) in enumerate(zip(group.products, group.weights)):
            stop = start + arrays[i].shape[1]
            result = group.biases[k][0] if group.biases else product
            result_of[result] = (group, start, stop)
            if group.biases:
                skipped.add(product)
            start = stop

    @mutator
    class _Concatenate(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.emitted: dict = {}  # id(group) -> its concatenated product (with the biases)

        def visit_var_binding_(self, binding) -> None:
            if binding.var in skipped:
                return
            if binding.var not in result_of:
                return super().visit_var_binding_(binding)
            group, start, stop = result_of[binding.var]
            if id(group) not in self.emitted:
                product = self.builder_.emit(relax.op.matmul(self.visit_expr(group.x), merged[group.weights[0]][0]))
                if group.biases:
                    product = self.builder_.emit(relax.op.add(product, merged[group.biases[0][1]][0]))
                self.emitted[id(group)] = product
            product = self.emitted[id(group)]
            axis = len(product.ty.shape) - 1
            columns = relax.op.strided_slice(product, axes=[axis], begin=[start], end=[stop])
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(columns)))

    body = _Concatenate(tvm.IRModule({"main": function})).visit_expr(function)
    replaced = {i: [merged[i]] for i in merged} | {i: [] for i in dropped}
    return replace_weights(function, body, weights, replaced)


def _bias_add(product, users: dict, only_param) -> tuple | None:
    """(binding var, weight index) of `product + bias`, the product's only use, bias a vector
    parameter used only there; None otherwise."""
    following = users.get(product, [])
    if len(following) != 1:
        return None
    value = following[0].value
    if getattr(getattr(value, "op", None), "name", None) != "relax.add":
        return None
    a, b = value.args
    other = b if a.same_as(product) else a
    i = only_param(other, 1)
    return (following[0].var, i) if i is not None else None


def _module(name: str) -> str:
    """The module a weight belongs to: "attn1.to_q.weight.T" -> "attn1"."""
    return name.removesuffix(".T").rsplit(".", 2)[0]
