"""FuseAttention: each softmax(Q K^T * scale [+ causal mask]) V becomes one fused kernel call.

The torch importer gives every attention as separate operators: matmul, multiply by the scale,
(add the mask,) softmax, matmul; legalized, the scores are a (groups, q_len, kv_len) tensor in
memory: 1 GiB of fp32 for SD 1.5's UNet at 512x512 (batch 2 x 8 heads x 4096^2), more than
WebGPU's default 128 MiB storage-buffer binding and four passes over it. This pass replaces the
chain with `R.call_tir` to `websd.kernels.attention.plain_attention(spec)`: target-independent
TensorIR that never holds more than one row of scores, tagged with the attribute
`websd.attention` (the spec), opaque so FuseOps leaves it alone. `llvm` compiles it as it is;
GPU targets swap in the hand-scheduled flash-attention kernel of the same spec in apply_db
(`websd.kernels.attention.schedule_attention`). A call_tir to a tagged PrimFunc, rather than a
Relax op of our own, keeps the later stages unchanged: it legalizes to itself.

The match is on what the ops compute, not on names:
- softmax over the last axis of scores = matmul(A, B) [reshaped in the batch dims only]
  [* or / a scalar constant] [+ a constant mask], whose probabilities (through batch reshapes)
  are the first operand of a matmul with V, and used nowhere else;
- the mask must evaluate (at compile time) to 0 on and below the diagonal and <= -1e30 above
  it (causal; -FLT_MAX as transformers writes it); an all-zero mask is dropped; anything
  else leaves the attention unfused;
- the operands' layouts: reshapes, permutes and same-shape broadcasts are pure views, so the
  pass follows them back from Q, K (through the K^T transpose) and V, and forward from the
  output, computing numerically where each element sits; where they come from (or go to) a
  (batch, tokens, heads * head_dim) tensor (diffusers' head_to_batch_dim / batch_to_head_dim,
  transformers' view + transpose), the kernel reads and writes that tensor directly and the
  head transposes disappear. Otherwise it takes (groups, tokens, head_dim) tensors.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from websd.kernels.attention import AttentionSpec, Operand, plain_attention

VIEW_OPS = ("relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims", "relax.squeeze")
MASKED = -1e30  # mask entries at or below this make exp() exactly 0 in fp32


def _shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.dtype != "float32":
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):  # symbolic
        return None


def _op(value) -> str | None:
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None


def _same(a, b) -> bool:
    return a is not None and b is not None and a.same_as(b)


def _scalar(expr) -> float | None:
    if isinstance(expr, tvm.ir.expr.GenericConst):
        array = expr.value.numpy()
        if array.size == 1:
            return float(array.reshape(()))
    return None


class _Graph:
    """The bindings of one function: value of each var, and how many places use each var."""

    def __init__(self, func: relax.Function):
        self.value: dict = {}
        self.uses: dict = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.value[binding.var] = binding.value
                    for var in relax.analysis.free_vars(binding.value):
                        self.uses[var] = self.uses.get(var, 0) + 1
        for var in relax.analysis.free_vars(func.body.body):
            self.uses[var] = self.uses.get(var, 0) + 1
        self.users: dict = {}
        for var, value in self.value.items():
            for used in relax.analysis.free_vars(value):
                self.users.setdefault(used, []).append(var)

    def view_input(self, var, slices: bool = False):
        """The tensor `var` is a view of (one view op back), or None; with `slices`, a slice
        of columns (strided_slice of step 1) counts as one."""
        value = self.value.get(var)
        if slices and _op(value) == "relax.strided_slice" and _unit_steps(value):
            return value.args[0]
        if _op(value) not in VIEW_OPS:
            return None
        if _op(value) == "relax.broadcast_to" and _shape(value.args[0]) != _shape(var):
            return None  # a real broadcast, not a view
        return value.args[0]

    def only_user(self, var):
        users = self.users.get(var, [])
        return users[0] if self.uses.get(var, 0) == 1 and len(users) == 1 else None


def _ints(expr) -> list[int]:
    return [int(field.value) for field in expr.fields]


def _unit_steps(value) -> bool:
    return len(value.args) < 5 or all(step == 1 for step in _ints(value.args[4]))


def _apply_view(array: np.ndarray, value) -> np.ndarray:
    """What one view op (or a slice) does to an array (of element indices)."""
    op = _op(value)
    if op == "relax.strided_slice":
        index = [slice(None)] * array.ndim
        for axis, begin, end in zip(*(_ints(arg) for arg in value.args[1:4])):
            index[axis] = slice(begin, end)
        return array[tuple(index)]
    if op == "relax.reshape":
        return array.reshape([int(d) for d in value.args[1].values])
    if op == "relax.permute_dims":
        axes = value.attrs.axes
        return array.transpose(None if axes is None else [int(a) for a in axes])
    if op == "relax.broadcast_to":
        return array
    if op == "relax.expand_dims":
        return np.expand_dims(array, tuple(int(a) for a in value.attrs.axis))
    if op == "relax.squeeze":
        axis = value.attrs.axis
        return array.squeeze(None if axis is None else tuple(int(a) for a in axis))
    raise ValueError(op)


def _layout_offsets(groups: int, tokens: int, head_dim: int, heads: int, row: int = 0, start: int = 0) -> np.ndarray:
    """Flat offset of each (group, token, d) element in a layout (Operand.offset, on index arrays)."""
    g, n, d = np.ogrid[:groups, :tokens, :head_dim]
    return Operand((), heads, row, start).offset(g, tokens, n, head_dim, d) + np.zeros((groups, tokens, head_dim), np.int64)


def _match_layout(index: np.ndarray, groups: int, tokens: int, head_dim: int) -> tuple[int, int, int] | None:
    """`index` (groups, tokens, head_dim): the flat offset in some tensor of each element. The
    Operand fields (heads, row, start) of the layout it is, or None."""
    if np.array_equal(index, _layout_offsets(groups, tokens, head_dim, 0)):
        return 0, 0, 0
    # heads: how many groups in a row sit head_dim apart at token 0
    start = int(index[0, 0, 0])
    starts = index[:, 0, 0] - start
    heads = 1
    while heads < groups and starts[heads] == heads * head_dim:
        heads += 1
    row = int(index[0, 1, 0] - start) if tokens > 1 else heads * head_dim
    row = 0 if row == heads * head_dim else row
    if groups % heads == 0 and np.array_equal(index, _layout_offsets(groups, tokens, head_dim, heads, row, start)):
        return heads, row, start
    return None


def _trace_input(graph: _Graph, var, groups: int, tokens: int, head_dim: int, transposed: bool):
    """(tensor, Operand) to read for a matmul operand `var`: (groups, tokens, head_dim) logically,
    stored (..., head_dim, tokens) if `transposed`. The furthest view ancestor whose elements sit
    in a supported layout, or None."""
    chain = [var]
    while (parent := graph.view_input(chain[-1], slices=True)) is not None:
        chain.append(parent)
    for start in range(len(chain) - 1, -1, -1):
        source = chain[start]
        shape = _shape(source)
        if shape is None:
            continue
        index = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        for step in range(start - 1, -1, -1):
            index = _apply_view(index, graph.value[chain[step]])
        if transposed:
            index = index.reshape(groups, head_dim, tokens).transpose(0, 2, 1)
        else:
            index = index.reshape(groups, tokens, head_dim)
        layout = _match_layout(index, groups, tokens, head_dim)
        if layout is None:
            continue
        heads, row, start = layout
        floats = row or heads * head_dim
        whole_rows = not heads or (start + heads * head_dim <= floats and math.prod(shape) == groups // heads * tokens * floats)
        if whole_rows and (head_dim % 4 or (floats % 4 == 0 and start % 4 == 0)):  # the kernel's vectors of 4
            return source, Operand(shape, heads, row, start)
    return None


def _trace_output(graph: _Graph, var, groups: int, tokens: int, head_dim: int):
    """(var to rebind, Operand) for the attention's output `var` (groups..., tokens, head_dim):
    the furthest chain of sole-user views of it whose result the kernel can write directly."""
    chain = [var]
    while (user := graph.only_user(chain[-1])) is not None and _same(graph.view_input(user), chain[-1]):
        chain.append(user)
    index = np.arange(groups * tokens * head_dim, dtype=np.int64).reshape(_shape(var))
    arrays = [index]
    for step in chain[1:]:
        arrays.append(_apply_view(arrays[-1], graph.value[step]))
    want = np.arange(groups * tokens * head_dim, dtype=np.int64).reshape(groups, tokens, head_dim)
    for target, array in reversed(list(zip(chain, arrays))):
        flat = array.reshape(-1)
        for heads in _candidate_heads(groups):
            if np.array_equal(flat[_layout_offsets(groups, tokens, head_dim, heads)], want):
                return target, Operand(_shape(target), heads)
    raise AssertionError("the output itself is always (groups, tokens, head_dim)")


def _candidate_heads(groups: int) -> list[int]:
    return [h for h in range(groups, 0, -1) if groups % h == 0] + [0]


def _batch_reshape(graph: _Graph, var, value) -> bool:
    """A reshape/same-shape broadcast that leaves the last two axes alone."""
    if graph.view_input(var) is None or _op(value) not in ("relax.reshape", "relax.broadcast_to"):
        return False
    before, after = _shape(value.args[0]), _shape(var)
    return before is not None and after is not None and before[-2:] == after[-2:]


class _MaskEvaluator:
    """Compile-time values of mask tensors computed from constants only (one llvm build each)."""

    def __init__(self, func: relax.Function, graph: _Graph):
        self.graph = graph
        self.order = {b.var: i for i, b in enumerate(b for block in func.body.blocks for b in block.bindings)}
        self.cache: dict = {}

    def __call__(self, var) -> np.ndarray | None:
        if isinstance(var, tvm.ir.expr.GenericConst):
            return var.value.numpy()
        if var not in self.cache:
            self.cache[var] = self._evaluate(var)
        return self.cache[var]

    def _evaluate(self, var) -> np.ndarray | None:
        needed, todo = set(), [var]
        while todo:
            v = todo.pop()
            if v in needed:
                continue
            if v not in self.graph.value:
                return None  # depends on a function parameter: not a constant
            needed.add(v)
            todo.extend(relax.analysis.free_vars(self.graph.value[v]))
        bb = relax.BlockBuilder()
        with bb.function("main", []):
            with bb.dataflow():
                for v in sorted(needed, key=self.order.__getitem__):
                    bb.emit_normalized(relax.VarBinding(v, self.graph.value[v]))
                out = bb.emit_output(var)
            bb.emit_func_output(out)
        executable = tvm.compile(bb.get(), "llvm")
        return relax.VirtualMachine(executable, tvm.cpu())["main"]().numpy()


def _causal(mask: np.ndarray, q_len: int, kv_len: int) -> bool | None:
    """True for a causal mask, False for an all-zero one, None for anything else."""
    if mask.ndim < 2 or mask.shape[-2:] != (q_len, kv_len) or any(d != 1 for d in mask.shape[:-2]):
        return None
    mask = mask.reshape(q_len, kv_len)
    if not mask.any():
        return False
    above = np.triu(np.ones((q_len, kv_len), bool), 1)
    if (mask[~above] == 0).all() and (mask[above] <= MASKED).all():
        return True
    return None


def _find(func: relax.Function, graph: _Graph) -> list[tuple]:
    """(var to rebind, spec, q, k, v tensors) of each attention in `func`."""
    masks = _MaskEvaluator(func, graph)
    found = []
    for probs, value in graph.value.items():
        if _op(value) != "relax.nn.softmax":
            continue
        shape = _shape(probs)
        if shape is None or int(value.attrs.axis) not in (-1, len(shape) - 1):
            continue
        q_len, kv_len = shape[-2:]
        # back from the softmax: [+ mask] [* or / scalar constants] matmul, with batch reshapes
        # anywhere; every step used only by the next
        scale, mask, scaled, node = 1.0, None, False, value.args[0]
        while node is not None:
            node_value = graph.value.get(node)
            op = _op(node_value)
            if graph.only_user(node) is None:
                node = None
            elif op == "relax.matmul":
                break
            elif op == "relax.add" and mask is None and not scaled:  # the mask after the scale only
                a, b = node_value.args
                node, mask = (a, b) if _shape(a) == _shape(node) else (b, a)
            elif op == "relax.multiply" and _scalar(node_value.args[1]) is not None:
                scale, scaled, node = scale * _scalar(node_value.args[1]), True, node_value.args[0]
            elif op == "relax.multiply" and _scalar(node_value.args[0]) is not None:
                scale, scaled, node = scale * _scalar(node_value.args[0]), True, node_value.args[1]
            elif op == "relax.divide" and _scalar(node_value.args[1]) is not None:
                scale, scaled, node = scale / _scalar(node_value.args[1]), True, node_value.args[0]
            elif _batch_reshape(graph, node, node_value):
                node = node_value.args[0]
            else:
                node = None
        if node is None:
            continue
        scores = graph.value[node]
        causal = False
        if mask is not None:
            mask_value = masks(mask)
            causal = None if mask_value is None else _causal(mask_value, q_len, kv_len)
            if causal is None:
                continue
        # forward from the softmax: [batch reshapes] matmul(probs, V)
        node = probs
        while (user := graph.only_user(node)) is not None and _batch_reshape(graph, user, graph.value[user]):
            node = user
        if user is None or _op(graph.value[user]) != "relax.matmul" or not _same(graph.value[user].args[0], node):
            continue
        out_var, a, bt, v = user, scores.args[0], scores.args[1], graph.value[user].args[1]
        a_shape, bt_shape, v_shape, out_shape = (_shape(x) for x in (a, bt, v, out_var))
        if None in (a_shape, bt_shape, v_shape, out_shape) or _shape(node)[-2:] != (q_len, kv_len):
            continue
        head_dim = a_shape[-1]
        groups = math.prod(out_shape[:-2])
        if (
            a_shape[-2] != q_len or bt_shape[-2:] != (head_dim, kv_len) or v_shape[-2:] != (kv_len, head_dim)
            or out_shape[-2:] != (q_len, head_dim)
            or not all(math.prod(s[:-2]) == groups for s in (a_shape, bt_shape, v_shape, _shape(node)))
        ):
            continue  # matmul broadcasting over the batch: not an attention of ours
        q = _trace_input(graph, a, groups, q_len, head_dim, transposed=False)
        k = _trace_input(graph, bt, groups, kv_len, head_dim, transposed=True)
        v_in = _trace_input(graph, v, groups, kv_len, head_dim, transposed=False)
        if k is None:  # materialize K as (groups, kv_len, head_dim)
            axes = list(range(len(bt_shape) - 2)) + [len(bt_shape) - 1, len(bt_shape) - 2]
            k = (relax.op.reshape(relax.op.permute_dims(bt, axes), (groups, kv_len, head_dim)), Operand((groups, kv_len, head_dim)))
        target, out = _trace_output(graph, out_var, groups, q_len, head_dim)
        spec = AttentionSpec(groups, q_len, kv_len, head_dim, causal, scale, q[1], k[1], v_in[1], out)
        found.append((target, spec, q[0], k[0], v_in[0]))
    return found


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod
        self.replace: dict = {}
        self.count = 0

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            graph = _Graph(func)
            self.replace = {}
            for target, spec, q, k, v in _find(func, graph):
                kernel = self.builder_.add_func(plain_attention(spec), "attention")
                self.replace[target] = relax.call_tir(kernel, [q, k, v], relax.TensorType(spec.out.shape, "float32"))
            if self.replace:
                self.count += len(self.replace)
                self.builder_.update_func(gv, relax.analysis.remove_all_unused(self.visit_expr(func)))
        return self.builder_.get()

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        call = self.replace.get(binding.var)
        if call is None:
            return super().visit_var_binding_(binding)
        new_value = self.builder_.normalize(self.visit_expr(call))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, new_value))


@tvm.transform.module_pass(opt_level=0, name="FuseAttention")
def fuse_attention(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    return _Rewriter(mod).transform()
