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
