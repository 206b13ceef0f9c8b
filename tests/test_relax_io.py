"""websd.relax_io: the weights of a build, picked from a model's by the build's names; and the
passes that store weights as the graph reads them: websd.passes.transpose_weights (a matrix the
graph only reads transposed, so) and websd.passes.concat_projections (the matrices that multiply
one tensor, side by side)."""

from __future__ import annotations

import numpy as np
import pytest

from websd.relax_io import select_weights


def test_select_weights_in_the_builds_order_with_column_blocks() -> None:
    table = np.arange(24, dtype=np.float32).reshape(4, 6)
    bias = np.ones(3, np.float32)
    names = ["bias", "emb.weight[:, 0:4]", "emb.weight[:, 4:6]"]
    selected = select_weights({"emb.weight": table, "bias": bias}, names)
    assert list(selected) == names
    assert selected["bias"] is bias
    np.testing.assert_array_equal(selected["emb.weight[:, 0:4]"], table[:, 0:4])
    np.testing.assert_array_equal(selected["emb.weight[:, 4:6]"], table[:, 4:6])
    assert selected["emb.weight[:, 4:6]"].flags.c_contiguous  # written to a tensor cache as is


def test_select_weights_transposes_a_transposed_matrix() -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    selected = select_weights({"proj.weight": weight}, ["proj.weight.T"])
    np.testing.assert_array_equal(selected["proj.weight.T"], weight.T)
    assert selected["proj.weight.T"].flags.c_contiguous


def test_select_weights_names_a_missing_parameter() -> None:
    with pytest.raises(KeyError, match="'other'"):
        select_weights({"emb.weight": np.zeros((2, 2))}, ["other[:, 0:1]"])


def linear_and_other_uses():
    """x @ w1^T + b, then @ w2^T; w3 is read transposed and as stored, so it stays as it is."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((5, 4), "float32"))
    w1, w2, w3 = (relax.Var(n, relax.TensorType(s, "float32")) for n, s in (("w1", (6, 4)), ("w2", (3, 6)), ("w3", (3, 3))))
    b = relax.Var("b", relax.TensorType((6,), "float32"))
    with bb.function("main", [x, w1, b, w2, w3]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(relax.op.matmul(x, relax.op.permute_dims(w1)), b))
            y = bb.emit(relax.op.matmul(h, relax.op.permute_dims(w2, [1, 0])))
            out = bb.emit_output(relax.op.matmul(relax.op.matmul(y, relax.op.permute_dims(w3)), w3))
        bb.emit_func_output(out)
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in
               (("l1.weight", (6, 4)), ("l1.bias", (6,)), ("l2.weight", (3, 6)), ("mixed", (3, 3)))}
    return bb.get()["main"], weights


def run_llvm(function, *args: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    executable = tvm.compile(tvm.IRModule({"main": function}), "llvm")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()


def test_matrices_read_only_transposed_are_stored_transposed() -> None:
    from websd.passes.transpose_weights import transpose_read_weights

    function, weights = linear_and_other_uses()
    transposed, new_weights = transpose_read_weights(function, weights)
    assert list(new_weights) == ["l1.weight.T", "l1.bias", "l2.weight.T", "mixed"]
    np.testing.assert_array_equal(new_weights["l1.weight.T"], weights["l1.weight"].T)
    assert transposed.script().count("permute_dims") == 1  # only the weight also read as stored
    # the weights are as select_weights picks them from the model's, and the results the same
    assert all(np.array_equal(a, b) for a, b in zip(new_weights.values(), select_weights(weights, list(new_weights)).values()))
    x = np.random.default_rng(1).standard_normal((5, 4), dtype=np.float32)
    np.testing.assert_allclose(run_llvm(transposed, x, *new_weights.values()), run_llvm(function, x, *weights.values()), rtol=1e-6)


def projections_of_one_input(bias: bool):
    """q, k, v = x @ Wq, x @ Wk, x @ Wv (each + its bias, if `bias`); out = q + k * v, and
    x @ Wo (another depth, so a group of its own: left alone). Wv belongs to another module
    than Wq and Wk (PyTorch's names): left alone too."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 5, 8), "float32"))
    names = ["attn.q.weight", "attn.k.weight", "other.v.weight"]  # v: another module's
    ws = [relax.Var(n, relax.TensorType((8, 4), "float32")) for n in ("wq", "wk", "wv")]
    bs = [relax.Var(n, relax.TensorType((4,), "float32")) for n in ("bq", "bk", "bv")] if bias else []
    wo = relax.Var("wo", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x, *[p for pair in zip(ws, bs or ws) for p in (pair if bias else pair[:1])], wo]):
        with bb.dataflow():
            q, k, v = (bb.emit(relax.op.matmul(x, w)) for w in ws)
            if bias:
                q, k, v = (bb.emit(relax.op.add(t, b)) for t, b in zip((q, k, v), bs))
            mixed = bb.emit(relax.op.add(q, relax.op.multiply(k, v)))
            out = bb.emit_output(relax.op.matmul(mixed, wo))
        bb.emit_func_output(out)
    rng = np.random.default_rng(0)
    shapes = [(n, (8, 4)) for n in names]
    if bias:
        shapes = [p for n, s in shapes for p in ((n, s), (n.replace("weight", "bias"), (4,)))]
    weights = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in [*shapes, ("o.weight", (4, 8))]}
    return bb.get()["main"], weights


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_projections_of_one_input_are_one_product(bias: bool) -> None:
    from websd.passes.concat_projections import concatenate_projections

    function, weights = projections_of_one_input(bias)
    merged, new_weights = concatenate_projections(function, weights, 1 << 20)
    want = ["attn.q.weight|attn.k.weight", *(["attn.q.bias|attn.k.bias"] if bias else []), "other.v.weight", *(["other.v.bias"] if bias else []),
            "o.weight"]
    assert list(new_weights) == want
    assert new_weights[want[0]].shape == (8, 8)
    assert merged.script().count("R.matmul") == 3 and merged.script().count("R.strided_slice") == 2
    # the weights are as select_weights picks them from the model's, and the results the same
    assert all(np.array_equal(a, b) for a, b in zip(new_weights.values(), select_weights(weights, list(new_weights)).values()))
    x = np.random.default_rng(1).standard_normal((2, 5, 8), dtype=np.float32)
    np.testing.assert_allclose(run_llvm(merged, x, *new_weights.values()), run_llvm(function, x, *weights.values()), rtol=1e-6)


def test_projections_larger_than_a_binding_stay_apart() -> None:
    from websd.passes.concat_projections import concatenate_projections

    function, weights = projections_of_one_input(False)
    assert concatenate_projections(function, weights, 2 * 8 * 4 * 4 - 1)[1] == weights
