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
