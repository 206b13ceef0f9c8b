"""Relax passes of our own, one per file; stages compose them with TVM's in one list."""

from __future__ import annotations


def static_shape(expr) -> list[int] | None:
    """A Relax tensor expression's shape, if it is fully static."""
    from tvm import relax

    info = getattr(expr, "ty", None)
    if not isinstance(info, relax.TensorType) or info.shape is None:
        return None
    try:
        return [int(d) for d in info.shape.values]
    except (TypeError, AttributeError):  # symbolic
        return None


def conv2d_shapes(call) -> list[list[int]] | None:
    """The (data, weight, output) shapes of a relax.nn.conv2d call the build's convolution
    passes rewrite: float32, one group, NCHW / OIHW / NCHW, static shapes; None for any other."""
    attrs = call.attrs
    operands = (*call.args, call)
    shapes = [static_shape(e) for e in operands]
    if (None in shapes or any(e.ty.dtype != "float32" for e in operands) or int(attrs.groups) != 1
            or (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW")):
        return None
    return shapes


def parameter_uses(function) -> dict:
    """Each parameter -> the calls that take it as an argument."""
    from tvm import relax

    params = set(function.params)
    uses: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Call):
            for arg in expr.args:
                if isinstance(arg, relax.Var) and arg in params:
                    uses.setdefault(arg, []).append(expr)

    relax.analysis.post_order_visit(function.body, visit)
    return uses


def replace_weights(function, body, weights: dict, replaced: dict[int, list[tuple]]):
    """`function` (its weights its last len(weights) parameters, in `weights`' order) with the
    body of `body` (it rewritten) and, in place of the weights `replaced` names by index, the
    (new parameter, name, array) it lists for each (none: the weight is dropped). Returns the
    new function and its weights, by name, in its parameter order."""
    from tvm import relax

    num_inputs = len(function.params) - len(weights)
    params = list(function.params)
    new_params, new_weights = params[:num_inputs], {}
    for i, (name, weight) in enumerate(weights.items()):
        for var, new_name, array in replaced.get(i, [(params[num_inputs + i], name, weight)]):
            new_params.append(var)
            new_weights[new_name] = array
    return relax.Function(new_params, body.body, body.ret_ty, body.is_pure, body.attrs, body.span), new_weights
