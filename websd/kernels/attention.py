"""Fused attention: softmax(scale * Q K^T [+ causal mask]) V without a scores tensor in memory.

Forms of the same computation, with the same signature (q, k, v, out):

- `plain_attention(spec)`: plain TensorIR, target-independent and unscheduled. Per query row it
  keeps the kv_len scores in a scratch buffer of kv_len floats (never q_len x kv_len), takes their
  max, sums the exponentials and weights V. The Relax pass (websd/passes/attention.py) emits it,
  so `llvm` compiles it as it is. It carries the attribute ATTR (the spec, `AttentionSpec`).
- `flash_attention(spec)`: hand-scheduled GPU kernel (explicit threads, workgroup memory,
  "tirx.is_scheduled" so dlight leaves it alone), a query row split over threads (below).
- `row_attention(spec, config)` (websd/kernels/row_attention.py): the GPU kernel for small head
  dims, whole query rows per invocation.

`gpu_kernel(spec)` picks the GPU form per head dim (row_attention.ROWS, else TILES);
`schedule_attention(target)` swaps it in for every function that carries ATTR; apply_db runs it
for GPU targets.

Q, K, V and the output are read and written where the graph has them: each operand is either
(groups, tokens, head_dim) contiguous, or the (batch, tokens, heads * head_dim) tensor that the
head split/merge reshapes came from (`Operand.heads` > 0): the kernel indexes it directly, so the
transposes around the attention disappear. groups = batch * heads; head_dim is contiguous in
every layout (coalesced loads along it).

The GPU kernel, one workgroup per (group, BQ query rows); within WebGPU's default limits (at most
256 invocations, 16 KiB workgroup storage, no f16, no i64, no blockIdx.z):

    Q tile -> shared (once if head_dim fits in one chunk, else per chunk)
    for each tile of BK keys (causal: only up to the tile's last query):
        S = Q K^T:    K streamed through shared in head_dim chunks of DCS; each thread keeps a
                      TQ x TK register tile of S (register blocking as in a tiled GEMM): TQ
                      consecutive queries, TK keys interleaved (key cg + C * j)
        softmax:      fp32 online softmax. Row maxima combine through shared memory (`red`); each
                      thread keeps the running max m and its part of the running sum l for its
                      rows in registers (all threads of a row compute the same m); P = exp(S - m)
                      goes to shared (transposed), the rescale factor exp(m_old - m) too
        O += P V:     V streamed through shared in chunks of BKV keys; each thread keeps a
                      TQO x TD register tile of O (its TD columns: vectors co + CO * u of head_dim),
                      rescaled by exp(m_old - m) first
    out = O / l  (the partial sums of l combine through `red` once, at the end)

Q, K and V sit in shared memory as they sit in memory, a token's head_dim in vectors of 4 floats
(when head_dim is a multiple of 4; else 1): Q and K vector-major, [vector][token] with each row
padded by one vector (a warp's stores down a column spread over the banks), V token-major. Every
access to them is a whole vector, so WebGPU's codegen types them `array<vec4<f32>>` and each
read is one 16-byte load (LDS.128); a scalar-typed tile prints each vector as four loads.
P is unpadded, its 4-float quads XOR-swizzled (`_swizzle`): read as quads of queries without
bank conflicts. Masked scores (keys past kv_len, causal) are a finite -1e30, never -inf (WGSL
rejects `-inff`), and their exponentials are exactly 0; the mask is one comparison per score
against a per-row key limit. The tiles per head dim are `TILES` / `tile_config` (one table,
documented there): change them there and check with `TileConfig.check`; bench/attention_bench.py
times them against the unfused chain on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ATTR = "websd.attention"
NEG = -1.0e30  # "minus infinity" for masked scores: finite, so no -inf literal reaches WGSL
WORKGROUP_BYTES = 16384  # WebGPU's default maxComputeWorkgroupStorageSize
WORKGROUP_THREADS = 256  # WebGPU's default maxComputeInvocationsPerWorkgroup
OPAQUE = 8  # relax's OpPatternKind::kOpaque


@dataclass(frozen=True)
class Operand:
    """How one of q, k, v, out sits in memory. `shape`: the tensor the kernel takes (the graph's).
    heads == 0: (groups, tokens, head_dim) contiguous. heads > 0: rows of `row` floats, one per
    (batch, token), each holding the heads' head_dims side by side from float `start` on: a
    (batch, tokens, heads * head_dim) tensor (row 0: heads * head_dim, start 0), or columns of a
    wider one (query, key and value projected in one product: websd/passes/concat_projections.py)."""

    shape: tuple[int, ...]
    heads: int = 0
    row: int = 0
    start: int = 0

    def row_floats(self, head_dim: int) -> int:
        return self.row or self.heads * head_dim

    def offset(self, group, tokens: int, token, head_dim: int, d):
        """Flat offset of element (group, token, d); TIR expressions in, TIR expression out."""
        if self.heads:
            h = self.heads
            return ((group // h) * tokens + token) * self.row_floats(head_dim) + self.start + (group % h) * head_dim + d
        return (group * tokens + token) * head_dim + d

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class AttentionSpec:
    groups: int  # batch * heads
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool  # key j sees query i iff j <= i (top-left aligned, as torch's is_causal)
    scale: float
    q: Operand
    k: Operand
    v: Operand
    out: Operand

    def __post_init__(self):
        for name, tokens in (("q", self.q_len), ("k", self.kv_len), ("v", self.kv_len), ("out", self.q_len)):
            op = getattr(self, name)
            if op.heads and self.groups % op.heads:
                raise ValueError(f"attention {name}: {self.groups} groups are not a multiple of {op.heads} heads")
            rows = self.groups // op.heads * tokens if op.heads else self.groups * tokens
            row = op.row_floats(self.head_dim) if op.heads else self.head_dim
            if op.numel != rows * row or (op.heads and op.start + op.heads * self.head_dim > row):
                raise ValueError(f"attention {name}: shape {op.shape} does not hold {self.groups} x {tokens} x {self.head_dim}")
            if self.head_dim % 4 == 0 and (row % 4 or op.start % 4):  # the kernel reads vectors of 4
                raise ValueError(f"attention {name}: rows of {row} floats from {op.start} on are not in vectors of 4")
            if name == "out" and op.row:
                raise ValueError("attention out: written whole, not as columns of a wider tensor")

    def to_attr(self) -> dict:
        """The function attribute: plain ints, floats and lists only."""
        attr = {k: v for k, v in asdict(self).items() if k not in ("q", "k", "v", "out")}
        attr["causal"] = int(self.causal)
        for name in ("q", "k", "v", "out"):
            op = getattr(self, name)
            attr[f"{name}_shape"] = list(op.shape)
            attr[f"{name}_heads"] = op.heads
            attr[f"{name}_row"] = op.row
            attr[f"{name}_start"] = op.start
        return attr

    @staticmethod
    def from_attr(attr) -> AttentionSpec:
        ops = {name: Operand(tuple(int(d) for d in attr[f"{name}_shape"]), *(int(attr[f"{name}_{key}"]) for key in ("heads", "row", "start")))
               for name in ("q", "k", "v", "out")}
        return AttentionSpec(
            groups=int(attr["groups"]), q_len=int(attr["q_len"]), kv_len=int(attr["kv_len"]), head_dim=int(attr["head_dim"]),
            causal=bool(int(attr["causal"])), scale=float(attr["scale"]), **ops,
        )

    @property
    def flops(self) -> int:
        """Multiply-adds of the two products, times two (causal counted in full)."""
        return 4 * self.groups * self.q_len * self.kv_len * self.head_dim


def _f32(x: float):
    from tvm import tirx

    return tirx.FloatImm("float32", float(x))


def plain_attention(spec: AttentionSpec):
    """Target-independent TensorIR: per query row, the scores in a kv_len scratch buffer."""
    from tvm import tirx
    from tvm.script import tirx as T

    G, N, M, D = spec.groups, spec.q_len, spec.kv_len, spec.head_dim
    scale, neg = _f32(spec.scale), _f32(NEG)

    def masked(i, j):
        return tirx.const(False) if not spec.causal else j > i

    @T.prim_func(private=True)
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, o_h: T.handle):
        q_in = T.match_buffer(q_h, spec.q.shape, "float32")
        k_in = T.match_buffer(k_h, spec.k.shape, "float32")
        v_in = T.match_buffer(v_h, spec.v.shape, "float32")
        o_in = T.match_buffer(o_h, spec.out.shape, "float32")
        q = T.decl_buffer((spec.q.numel,), "float32", data=q_in.data)
        k = T.decl_buffer((spec.k.numel,), "float32", data=k_in.data)
        v = T.decl_buffer((spec.v.numel,), "float32", data=v_in.data)
        o = T.decl_buffer((spec.out.numel,), "float32", data=o_in.data)
        scores = T.alloc_buffer((M,), "float32")
        acc = T.alloc_buffer((D,), "float32")
        stat = T.alloc_buffer((2,), "float32")  # running max, sum of exponentials
        for g in range(G):
            for i in range(N):
                stat[0] = neg
                for j in range(M):
                    scores[j] = _f32(0)
                    for d in range(D):
                        scores[j] = scores[j] + q[spec.q.offset(g, N, i, D, d)] * k[spec.k.offset(g, M, j, D, d)]
                    if masked(i, j):
                        scores[j] = neg
                    else:
                        scores[j] = scores[j] * scale
                    stat[0] = T.max(stat[0], scores[j])
                stat[1] = _f32(0)
                for d in range(D):
                    acc[d] = _f32(0)
                for j in range(M):
                    scores[j] = T.exp(scores[j] - stat[0])
                    stat[1] = stat[1] + scores[j]
                    for d in range(D):
                        acc[d] = acc[d] + scores[j] * v[spec.v.offset(g, M, j, D, d)]
                for d in range(D):
                    o[spec.out.offset(g, N, i, D, d)] = acc[d] / stat[1]

    # opaque: FuseOps must not fuse anything into it
    return attention.with_attr(ATTR, spec.to_attr()).with_attr("op_pattern", OPAQUE)


# ---------------------------------------------------------------------------------------------
# The GPU kernel's tiles


@dataclass(frozen=True)
class TileConfig:
    """One workgroup: BQ query rows, keys in tiles of BK, THREADS invocations.

    S = Q K^T tile (BQ x BK): thread grid (BQ/TQ) x (BK/TK), a TQ x TK register tile each; Q and K
    go through shared memory in head_dim chunks of DCS (Q stays resident if DCS >= head_dim).
    O tile (BQ x head_dim): thread grid (BQ/TQO) x (THREADS*TQO/BQ), a TQO x TD register tile each
    (head_dim padded up to the grid's columns x TD); V goes through shared in chunks of BKV keys.
    """

    BQ: int
    BK: int
    TQ: int
    TK: int
    DCS: int
    TQO: int
    BKV: int
    THREADS: int

    @property
    def threads(self) -> int:
        """Invocations per workgroup (as RowConfig.threads)."""
        return self.THREADS

    def columns(self) -> int:
        """Thread columns of the O tile."""
        return self.THREADS * self.TQO // self.BQ

    def vector(self, head_dim: int) -> int:
        """Floats per vector of Q, K and V in shared memory (and per global load)."""
        return 4 if head_dim % 4 == 0 and min(self.DCS, head_dim) % 4 == 0 else 1

    def td(self, head_dim: int) -> int:
        """Columns of O per thread: whole vectors, head_dim padded up to the O grid."""
        vec = self.vector(head_dim)
        return -(-(head_dim // vec) // self.columns()) * vec

    def shared_floats(self, head_dim: int) -> dict[str, int]:
        dcs = min(self.DCS, head_dim)
        return {
            "q": dcs * (self.BQ + 1),  # rows padded by a vector
            "kv": max(dcs * (self.BK + 1), self.BKV * self.td(head_dim) * self.columns()),
            "p": self.BK * self.BQ,
            "red": self.BQ * (self.BK // self.TK),
            "alpha": self.BQ,
        }

    def check(self, head_dim: int) -> None:
        """Raise ValueError unless the tiles are consistent and within WebGPU's default limits."""
        problems = []
        if self.THREADS > WORKGROUP_THREADS:
            problems.append(f"{self.THREADS} threads > {WORKGROUP_THREADS}")
        if self.BQ % self.TQ or self.BK % self.TK or (self.BQ // self.TQ) * (self.BK // self.TK) != self.THREADS:
            problems.append(f"S grid (BQ/TQ) x (BK/TK) != {self.THREADS} threads")
        if self.BQ % self.TQO or (self.THREADS * self.TQO) % self.BQ:
            problems.append("O grid: BQ/TQO does not divide the threads")
        if self.BK % self.BKV:
            problems.append("BKV does not divide BK")
        for name in ("BQ", "BK"):  # rows of 4-float quads, swizzled by XOR
            if getattr(self, name) < 4 or getattr(self, name) & (getattr(self, name) - 1):
                problems.append(f"{name} is not a power of two >= 4")
        for name in ("TQ", "TQO"):  # queries of P written and read as whole quads or within one
            if 4 % getattr(self, name) and getattr(self, name) % 4:
                problems.append(f"{name} neither divides 4 nor is a multiple of 4")
        if not problems:  # the workgroup memory is only defined for consistent tiles
            nbytes = 4 * sum(self.shared_floats(head_dim).values())
            if nbytes > WORKGROUP_BYTES:
                problems.append(f"{nbytes} bytes of workgroup memory > {WORKGROUP_BYTES}")
        if problems:
            raise ValueError(f"tile config {self} for head_dim {head_dim}: " + "; ".join(problems))


# Per head_dim, the SD 1.x shapes (bench/results/attention.md has the earlier, transposed layout's
# measured on an H200; each was re-fitted to the vector layout's padded rows and whole vectors of
# O per thread):
# - 40 (UNet at 4096 tokens, most of the attention work): 32 queries x 32 keys, 64 threads with
#   4x4 tiles of S, Q resident; O as 1 row x 5 vectors a thread (10 vectors a row, 2 threads).
# - 80 (1024 tokens), 64 (CLIP): the same S tiles, Q and K in chunks of 40 / 32 of head_dim; O as
#   2 rows x 5 vectors (80) and 4 rows x 2 vectors (64).
# - 160 (256 and 64 tokens): few queries, so 16 per workgroup for twice the workgroups; 64
#   threads (2x4 tiles of S, 2 rows x 5 vectors of O), V through shared 16 keys at a time. Chosen
#   among 8 configs timed natively on an H200 (bench/results/attention.md): the first choice, 32
#   queries and 128 threads, lost to the unfused chain at 256 tokens.
# - 512 (VAE, one head, 4096 tokens): 16 queries per workgroup (256 workgroups), 64 keys per tile,
#   each thread owns 16 query rows x 4 columns of O (64 registers) so a P value read serves 4
#   multiply-adds and a V value 16; V through shared 4 keys (8 KiB) at a time.
TILES: dict[int, TileConfig] = {
    40: TileConfig(BQ=32, BK=32, TQ=4, TK=4, DCS=40, TQO=1, BKV=32, THREADS=64),
    64: TileConfig(BQ=32, BK=32, TQ=4, TK=4, DCS=32, TQO=4, BKV=16, THREADS=64),
    80: TileConfig(BQ=32, BK=32, TQ=4, TK=4, DCS=40, TQO=2, BKV=16, THREADS=64),
    160: TileConfig(BQ=16, BK=32, TQ=2, TK=4, DCS=40, TQO=2, BKV=16, THREADS=64),
    512: TileConfig(BQ=16, BK=64, TQ=2, TK=4, DCS=32, TQO=16, BKV=4, THREADS=128),
}


def sd15_specs(batch: int = 2) -> dict[str, AttentionSpec]:
    """The attentions of SD 1.5 at 512x512 as the pass gives them (the shapes TILES is for):
    UNet self- and cross-attention (8 heads) at batch `batch`, the VAE decoder's mid-block
    (one head of 512), the text encoder (12 heads of 64, causal, batch 1)."""

    def spec(batch, heads, q_len, kv_len, head_dim, causal=False):
        def op(tokens):
            return Operand((batch * tokens, heads * head_dim), heads)

        return AttentionSpec(batch * heads, q_len, kv_len, head_dim, causal, head_dim**-0.5, op(q_len), op(kv_len), op(kv_len), op(q_len))

    specs = {}
    for tokens, head_dim in ((4096, 40), (1024, 80), (256, 160), (64, 160)):
        specs[f"unet_self_{tokens}"] = spec(batch, 8, tokens, tokens, head_dim)
        specs[f"unet_cross_{tokens}"] = spec(batch, 8, tokens, 77, head_dim)
    specs["vae_mid_4096"] = spec(1, 1, 4096, 4096, 512)
    specs["clip_77"] = spec(1, 12, 77, 77, 64, causal=True)
    return specs


def tile_config(head_dim: int) -> TileConfig:
    """The table's tiles for `head_dim`, else the first generic candidate that fits."""
    if head_dim in TILES:
        return TILES[head_dim]
    if head_dim <= 128:
        shapes = [dict(BQ=32, BK=32, TQ=4, TK=4, TQO=4, THREADS=64)]
    elif head_dim <= 256:
        shapes = [dict(BQ=32, BK=32, TQ=2, TK=4, TQO=4, THREADS=128)]
    else:
        shapes = [dict(BQ=16, BK=64, TQ=2, TK=4, TQO=16, THREADS=128), dict(BQ=16, BK=32, TQ=1, TK=4, TQO=16, THREADS=128)]
    for shape in shapes:
        for dcs in (40, 32, 16, 8, 4):
            for bkv in (32, 16, 8, 4, 2, 1):
                if bkv > shape["BK"]:
                    continue
                config = TileConfig(DCS=dcs, BKV=bkv, **shape)
                try:
                    config.check(head_dim)
                except ValueError:
                    continue
                return config
    raise ValueError(f"no attention tiles fit head_dim {head_dim} in {WORKGROUP_BYTES} bytes")


def _swizzle(col, row, quads: int):
    """Column of element (row, col) in a shared tile of `quads` 4-float quads per row: the quad
    index XOR the row. Reads of up to 4 aligned floats of a row stay contiguous (vectorizable),
    and a warp's stores down a column (the transposes) spread over the banks instead of hitting
    one: no padding, so the tiles fit WebGPU's 16 KiB."""
    return (((col // 4) ^ (row % quads)) * 4) + col % 4


def flash_attention(spec: AttentionSpec, config: TileConfig | None = None):
    """The scheduled GPU kernel for `spec` (same signature as `plain_attention(spec)`)."""
    from tvm import tirx
    from tvm.script import tirx as T

    G, N, M, D = spec.groups, spec.q_len, spec.kv_len, spec.head_dim
    cfg = config or tile_config(D)
    cfg.check(D)
    BQ, BK, TQ, TK, TQO, BKV, NT = cfg.BQ, cfg.BK, cfg.TQ, cfg.TK, cfg.TQO, cfg.BKV, cfg.THREADS
    DCS = min(cfg.DCS, D)
    NCH = -(-D // DCS)  # head_dim chunks of S
    RESIDENT = NCH == 1  # Q loaded once per workgroup
    C = BK // TK  # thread columns of S
    CO = cfg.columns()  # thread columns of O
    VEC = cfg.vector(D)  # floats per vector of Q, K, V (shared tiles and global loads)
    DV = DCS // VEC  # vectors of a chunk
    TDV = cfg.td(D) // VEC  # vectors of O per thread and row
    DP = TDV * CO * VEC  # head_dim padded to the O grid
    QROW, KROW = BQ + 1, BK + 1  # vectors per row of q_s and of K in kv_s, padded by one
    QQ = BQ // 4  # quads per row of p_s [key][query]
    KV_FLOATS = max(DCS * KROW, BKV * DP)
    Q_TILES = -(-N // BQ)
    KV_TILES = -(-M // BK)
    QK_ITERS = -(-BQ * DV // NT), -(-BK * DV // NT)
    V_ITERS = -(-BKV * DP // VEC // NT)
    VQ, VO = min(TQ, 4), min(TQO, 4)  # widths of P's writes and reads
    scale, neg, zero, one = _f32(spec.scale), _f32(NEG), _f32(0), _f32(1)

    def kv_tiles(q0):
        if spec.causal:  # keys past the tile's last query are masked for every row of it
            return T.min(KV_TILES, (T.min(q0 + BQ, N) - 1) // BK + 1)
        return KV_TILES

    def key_limit(query):
        # One comparison per score against a per-row limit: compound conditions in the 16
        # unrolled branches took SwiftShader's shader compiler over a minute.
        return T.min(M, query + 1) if spec.causal else M

    def at(operand: Operand, group, tokens: int, token, d):
        return operand.offset(group, tokens, token, D, d)

    def load_q(kt):  # each chunk at every KV tile, or a resident Q once
        return kt == 0 if RESIDENT else tirx.const(True)

    def qs(v, query):  # q_s [vector][query]
        return (v * QROW + query) * VEC

    def ks(v, key):  # K in kv_s: [vector][key]
        return (v * KROW + key) * VEC

    def ps(key, col):  # p_s [key][query]
        return key * BQ + _swizzle(col, key, QQ)

    @T.prim_func(private=True)
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, o_h: T.handle):
        q_in = T.match_buffer(q_h, spec.q.shape, "float32")
        k_in = T.match_buffer(k_h, spec.k.shape, "float32")
        v_in = T.match_buffer(v_h, spec.v.shape, "float32")
        o_in = T.match_buffer(o_h, spec.out.shape, "float32")
        q = T.decl_buffer((spec.q.numel,), "float32", data=q_in.data)
        k = T.decl_buffer((spec.k.numel,), "float32", data=k_in.data)
        v = T.decl_buffer((spec.v.numel,), "float32", data=v_in.data)
        o = T.decl_buffer((spec.out.numel,), "float32", data=o_in.data)
        for g in T.thread_binding(G, thread="blockIdx.y"):
            for qt in T.thread_binding(Q_TILES, thread="blockIdx.x"):
                for tx in T.thread_binding(NT, thread="threadIdx.x"):
                    q_s = T.alloc_buffer((DCS * QROW,), "float32", scope="shared")
                    kv_s = T.alloc_buffer((KV_FLOATS,), "float32", scope="shared")  # K [vector][key], then V [key][d]
                    p_s = T.alloc_buffer((BK * BQ,), "float32", scope="shared")
                    red = T.alloc_buffer((BQ * C,), "float32", scope="shared")  # [query][S column]
                    alpha_s = T.alloc_buffer((BQ,), "float32", scope="shared")
                    s_r = T.alloc_buffer((TQ * TK,), "float32", scope="local")
                    o_r = T.alloc_buffer((TQO * TDV * VEC,), "float32", scope="local")
                    m_r = T.alloc_buffer((TQ,), "float32", scope="local")
                    l_r = T.alloc_buffer((TQ,), "float32", scope="local")
                    a_r = T.alloc_buffer((TQ,), "float32", scope="local")
                    lim_r = T.alloc_buffer((TQ,), "int32", scope="local")  # the row sees keys < lim
                    qv_r = T.alloc_buffer((max(TQ * VEC, TQO),), "float32", scope="local")  # Q's vectors / a column of P
                    kv_r = T.alloc_buffer((max(TK, TDV) * VEC,), "float32", scope="local")  # K's / V's vectors
                    q0: T.let[T.int32] = qt * BQ
                    rg: T.let[T.int32] = tx // C  # S grid
                    cg: T.let[T.int32] = tx % C
                    ro: T.let[T.int32] = tx // CO  # O grid
                    co: T.let[T.int32] = tx % CO
                    for i in T.unroll(TQ):
                        m_r[i] = neg
                        l_r[i] = zero
                        lim_r[i] = key_limit(q0 + rg * TQ + i)
                    for e in T.unroll(TQO * TDV):
                        for w in T.vectorized(VEC):
                            o_r[e * VEC + w] = zero
                    for kt in range(kv_tiles(q0)):
                        # ---- S = Q K^T, head_dim in chunks of DCS
                        for e in T.unroll(TQ * TK):
                            s_r[e] = zero
                        for c in range(NCH):
                            if c > 0:
                                T.tvm_storage_sync("shared")
                            if load_q(kt):  # Q chunk -> q_s; consecutive threads read along a token
                                for it in T.unroll(QK_ITERS[0]):
                                    if it * NT + tx < BQ * DV:
                                        if q0 + (it * NT + tx) // DV < N and c * DCS + (it * NT + tx) % DV * VEC < D:
                                            for w in T.vectorized(VEC):
                                                q_s[qs((it * NT + tx) % DV, (it * NT + tx) // DV) + w] = q[at(spec.q, g, N, q0 + (it * NT + tx) // DV, c * DCS + (it * NT + tx) % DV * VEC) + w]
                                        else:
                                            for w in T.vectorized(VEC):
                                                q_s[qs((it * NT + tx) % DV, (it * NT + tx) // DV) + w] = zero
                            for it in T.unroll(QK_ITERS[1]):  # K chunk -> kv_s
                                if it * NT + tx < BK * DV:
                                    if kt * BK + (it * NT + tx) // DV < M and c * DCS + (it * NT + tx) % DV * VEC < D:
                                        for w in T.vectorized(VEC):
                                            kv_s[ks((it * NT + tx) % DV, (it * NT + tx) // DV) + w] = k[at(spec.k, g, M, kt * BK + (it * NT + tx) // DV, c * DCS + (it * NT + tx) % DV * VEC) + w]
                                    else:
                                        for w in T.vectorized(VEC):
                                            kv_s[ks((it * NT + tx) % DV, (it * NT + tx) // DV) + w] = zero
                            T.tvm_storage_sync("shared")
                            for dv in range(DV):
                                for i in T.unroll(TQ):
                                    for w in T.vectorized(VEC):
                                        qv_r[i * VEC + w] = q_s[qs(dv, rg * TQ + i) + w]
                                for j in T.unroll(TK):
                                    for w in T.vectorized(VEC):
                                        kv_r[j * VEC + w] = kv_s[ks(dv, cg + C * j) + w]
                                for i in T.unroll(TQ):
                                    for j in T.unroll(TK):
                                        for w in T.unroll(VEC):
                                            s_r[i * TK + j] = s_r[i * TK + j] + qv_r[i * VEC + w] * kv_r[j * VEC + w]
                        # ---- online softmax: the rows' maxima through `red`
                        for i in T.unroll(TQ):
                            a_r[i] = neg
                            for j in T.unroll(TK):
                                if kt * BK + cg + C * j < lim_r[i]:
                                    s_r[i * TK + j] = s_r[i * TK + j] * scale
                                else:
                                    s_r[i * TK + j] = neg
                                a_r[i] = T.max(a_r[i], s_r[i * TK + j])
                            red[(rg * TQ + i) * C + cg] = a_r[i]
                        T.tvm_storage_sync("shared")
                        for i in T.unroll(TQ):
                            a_r[i] = m_r[i]
                            for j in range(C):
                                a_r[i] = T.max(a_r[i], red[(rg * TQ + i) * C + j])
                            l_r[i] = l_r[i] * T.exp(m_r[i] - a_r[i])
                            if cg == 0:
                                alpha_s[rg * TQ + i] = T.exp(m_r[i] - a_r[i])
                            m_r[i] = a_r[i]
                            for j in T.unroll(TK):
                                s_r[i * TK + j] = T.exp(s_r[i * TK + j] - a_r[i])
                                l_r[i] = l_r[i] + s_r[i * TK + j]
                        for j in T.unroll(TK):  # P -> p_s, transposed, a quad of queries at a time
                            for u in T.unroll(TQ // VQ):
                                for i in T.vectorized(VQ):
                                    p_s[ps(cg + C * j, rg * TQ + u * VQ) + i] = s_r[(u * VQ + i) * TK + j]
                        T.tvm_storage_sync("shared")
                        # ---- O = alpha O + P V, V in chunks of BKV keys
                        for i in T.unroll(TQO):
                            for e in T.unroll(TDV):
                                for w in T.vectorized(VEC):
                                    o_r[(i * TDV + e) * VEC + w] = o_r[(i * TDV + e) * VEC + w] * alpha_s[ro * TQO + i]
                        for vc in range(BK // BKV):
                            if vc > 0:
                                T.tvm_storage_sync("shared")
                            for it in T.unroll(V_ITERS):  # V chunk -> kv_s [key][d]
                                if it * NT + tx < BKV * DP // VEC:
                                    if kt * BK + vc * BKV + (it * NT + tx) // (DP // VEC) < M and (it * NT + tx) % (DP // VEC) * VEC < D:
                                        for w in T.vectorized(VEC):
                                            kv_s[(it * NT + tx) * VEC + w] = v[at(spec.v, g, M, kt * BK + vc * BKV + (it * NT + tx) // (DP // VEC), (it * NT + tx) % (DP // VEC) * VEC) + w]
                                    else:
                                        for w in T.vectorized(VEC):
                                            kv_s[(it * NT + tx) * VEC + w] = zero
                            T.tvm_storage_sync("shared")
                            for kk in range(BKV):
                                for u in T.unroll(TQO // VO):
                                    for i in T.vectorized(VO):
                                        qv_r[u * VO + i] = p_s[ps(vc * BKV + kk, ro * TQO + u * VO) + i]
                                for e in T.unroll(TDV):
                                    for w in T.vectorized(VEC):
                                        kv_r[e * VEC + w] = kv_s[kk * DP + (co + CO * e) * VEC + w]
                                for i in T.unroll(TQO):
                                    for e in T.unroll(TDV):
                                        for w in T.vectorized(VEC):
                                            o_r[(i * TDV + e) * VEC + w] = o_r[(i * TDV + e) * VEC + w] + qv_r[i] * kv_r[e * VEC + w]
                        T.tvm_storage_sync("shared")
                    # ---- out = O / l, the parts of l through `red`
                    for i in T.unroll(TQ):
                        red[(rg * TQ + i) * C + cg] = l_r[i]
                    T.tvm_storage_sync("shared")
                    for i in T.unroll(TQO):
                        if q0 + ro * TQO + i < N:
                            qv_r[i] = zero
                            for j in range(C):
                                qv_r[i] = qv_r[i] + red[(ro * TQO + i) * C + j]
                            for e in T.unroll(TDV):
                                if (co + CO * e) * VEC < D:
                                    for w in T.vectorized(VEC):
                                        o[at(spec.out, g, N, q0 + ro * TQO + i, (co + CO * e) * VEC) + w] = o_r[(i * TDV + e) * VEC + w] * (one / qv_r[i])

    return attention.with_attr(ATTR, spec.to_attr()).with_attr("tirx.is_scheduled", True)


def gpu_kernel(spec: AttentionSpec, config=None):
    """The scheduled GPU kernel of `spec`: with `config`'s tiles (a TileConfig, or a RowConfig of
    websd/kernels/row_attention.py), else whole rows per invocation where its ROWS table has the
    head dim, else this module's TILES."""
    from websd.kernels.row_attention import ROWS, RowConfig, row_attention

    config = config or ROWS.get(spec.head_dim) or tile_config(spec.head_dim)
    return row_attention(spec, config) if isinstance(config, RowConfig) else flash_attention(spec, config)


def schedule_attention(target: str, tiles: dict | None = None):
    """A module pass for `target` (a websd.targets name): on GPU targets, every PrimFunc that
    carries ATTR becomes the scheduled `gpu_kernel` of its spec; elsewhere nothing changes.
    `tiles` (per head_dim: TileConfig or RowConfig) replace the tables', to time others
    (bench/matmul_tiles.py, bench/attention_bench.py)."""
    import tvm

    from websd.targets import is_gpu

    @tvm.transform.module_pass(opt_level=0, name="ScheduleAttention")
    def swap(mod, _ctx):
        if not is_gpu(target):
            return mod
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tvm.tirx.PrimFunc) and ATTR in (func.attrs or {}):
                spec = AttentionSpec.from_attr(func.attrs[ATTR])
                kernel = gpu_kernel(spec, (tiles or {}).get(spec.head_dim))
                for key in ("global_symbol", "op_pattern"):
                    if key in func.attrs:
                        kernel = kernel.with_attr(key, func.attrs[key])
                mod[gv] = kernel
        return mod

    return swap
