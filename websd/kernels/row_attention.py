"""Fused attention for small head dims: each invocation owns whole query rows.

The second GPU form of websd/kernels/attention.py's computation (same spec, same signature), for
head dims whose query and output rows fit in registers (2 x TQ x head_dim floats per invocation).
Where the tiled form splits a query row over threads, and so reduces every row's maximum and
sum through workgroup memory and barriers, here an invocation holds its rows' Q, O, running max
and sum itself, and the softmax needs no other thread:

    Q rows -> registers, scaled by scale * log2(e) (the exponentials are exp2)
    K and V of the first tile of BK keys -> registers
    for each tile (causal: only up to the workgroup's last query):
        registers -> shared, [key][vector of head_dim]; the next tile's loads issued
        S = Q K^T:   every invocation reads the same K vector (a broadcast, no bank conflicts);
                     KU keys at a time, each score summed per vec4 lane (4 x KU independent
                     chains of FMAs, not one of head_dim), the scores to the invocation's own
                     column of P in shared (conflict-free, no barrier)
        online softmax: the tile's max per row, O and l rescaled by exp2(m_old - m) once a tile
        O += P V:    P from its own column, V broadcast as K was
    out = O / l

P lives in shared memory rather than registers so that the loops over keys need not be unrolled
to index it. Masked scores (keys past kv_len, causal) are NEG, as in the tiled form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from websd.kernels.attention import ATTR, NEG, WORKGROUP_BYTES, WORKGROUP_THREADS, AttentionSpec, _f32

# Q and O floats an invocation keeps (2 x TQ x head_dim) at most: head dim 80 at one row (160)
# already takes 242 registers in NVCC, out of 255.
MAX_ROW_FLOATS = 160


@dataclass(frozen=True)
class RowConfig:
    """One workgroup: BQ query rows, TQ per invocation (rows tx, tx + BQ/TQ, ...), keys in tiles of BK."""

    BQ: int
    BK: int
    TQ: int

    @property
    def threads(self) -> int:
        return self.BQ // self.TQ

    def shared_floats(self, head_dim: int) -> dict[str, int]:
        return {"k": self.BK * head_dim, "v": self.BK * head_dim, "p": self.BK * self.BQ}

    def check(self, head_dim: int) -> None:
        """Raise ValueError unless the rows are consistent and within WebGPU's default limits."""
        problems = []
        if self.BQ % self.TQ:
            problems.append("TQ does not divide BQ")
        elif self.threads > WORKGROUP_THREADS:
            problems.append(f"{self.threads} threads > {WORKGROUP_THREADS}")
        if 2 * self.TQ * head_dim > MAX_ROW_FLOATS:
            problems.append(f"{2 * self.TQ * head_dim} floats of Q and O per invocation > {MAX_ROW_FLOATS}")
        nbytes = 4 * sum(self.shared_floats(head_dim).values())
        if nbytes > WORKGROUP_BYTES:
            problems.append(f"{nbytes} bytes of workgroup memory > {WORKGROUP_BYTES}")
        if problems:
            raise ValueError(f"row config {self} for head_dim {head_dim}: " + "; ".join(problems))


def row_attention(spec: AttentionSpec, cfg: RowConfig):
    """The scheduled GPU kernel for `spec` with whole rows per invocation."""
    from tvm.script import tirx as T

    G, N, M, D = spec.groups, spec.q_len, spec.kv_len, spec.head_dim
    cfg.check(D)
    BQ, BK, TQ, NT = cfg.BQ, cfg.BK, cfg.TQ, cfg.threads
    VEC = 4 if D % 4 == 0 else 1  # floats per vector of Q, K, V, O
    DV = D // VEC
    Q_TILES = -(-N // BQ)
    KV_TILES = -(-M // BK)
    KU = math.gcd(BK, 4)  # keys whose scores are summed at once: independent chains of FMAs
    LOADS = -(-BK * DV // NT)  # vectors of K (and of V) each invocation stages per tile
    qscale = _f32(spec.scale * math.log2(math.e))
    neg, zero, one = _f32(NEG), _f32(0), _f32(1)

    def kv_tiles(q0):
        if spec.causal:  # keys past the workgroup's last query are masked for all its rows
            return T.min(KV_TILES, (T.min(q0 + BQ, N) - 1) // BK + 1)
        return KV_TILES

    def visible(key, query):
        return key < (T.min(M, query + 1) if spec.causal else M)

    def at(operand, group, tokens: int, token, d):
        return operand.offset(group, tokens, token, D, d)

    @T.macro
    def fetch(k, v, kf_r, vf_r, g, tx, tile):  # K and V of a tile -> registers; consecutive invocations along a key
        for it in T.unroll(LOADS):
            if it * NT + tx < BK * DV:
                if tile * BK + (it * NT + tx) // DV < M:
                    for w in T.vectorized(VEC):
                        kf_r[it * VEC + w] = k[at(spec.k, g, M, tile * BK + (it * NT + tx) // DV, (it * NT + tx) % DV * VEC) + w]
                    for w in T.vectorized(VEC):
                        vf_r[it * VEC + w] = v[at(spec.v, g, M, tile * BK + (it * NT + tx) // DV, (it * NT + tx) % DV * VEC) + w]
                else:  # past kv_len: zeros, so that 0-weighted rows of V stay finite
                    for w in T.vectorized(VEC):
                        kf_r[it * VEC + w] = zero
                    for w in T.vectorized(VEC):
                        vf_r[it * VEC + w] = zero

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
                    k_s = T.alloc_buffer((BK * D,), "float32", scope="shared")  # [key][vector]
                    v_s = T.alloc_buffer((BK * D,), "float32", scope="shared")
                    p_s = T.alloc_buffer((BK * BQ,), "float32", scope="shared")  # [key][row]
                    q_r = T.alloc_buffer((TQ * D,), "float32", scope="local")
                    o_r = T.alloc_buffer((TQ * D,), "float32", scope="local")
                    m_r = T.alloc_buffer((TQ,), "float32", scope="local")  # running max (log2 domain)
                    l_r = T.alloc_buffer((TQ,), "float32", scope="local")  # running sum
                    s_r = T.alloc_buffer((KU * TQ * VEC,), "float32", scope="local")  # scores, per lane of the vectors
                    c_r = T.alloc_buffer((VEC,), "float32", scope="local")  # one score's lanes
                    t_r = T.alloc_buffer((TQ,), "float32", scope="local")  # the tile's max, then exp2 of a score
                    x_r = T.alloc_buffer((KU * VEC,), "float32", scope="local")  # vectors of K, or one of V
                    kf_r = T.alloc_buffer((LOADS * VEC,), "float32", scope="local")  # the next tile of K, fetched
                    vf_r = T.alloc_buffer((LOADS * VEC,), "float32", scope="local")  # and of V
                    q0: T.let[T.int32] = qt * BQ

                    for i in T.unroll(TQ):
                        m_r[i] = neg
                        l_r[i] = zero
                        for dv in T.unroll(DV):
                            if q0 + i * NT + tx < N:
                                for w in T.vectorized(VEC):
                                    q_r[(i * DV + dv) * VEC + w] = q[at(spec.q, g, N, q0 + i * NT + tx, dv * VEC) + w] * qscale
                            else:
                                for w in T.vectorized(VEC):
                                    q_r[(i * DV + dv) * VEC + w] = zero
                            for w in T.vectorized(VEC):
                                o_r[(i * DV + dv) * VEC + w] = zero
                    fetch(k, v, kf_r, vf_r, g, tx, 0)
                    for kt in range(kv_tiles(q0)):
                        for it in T.unroll(LOADS):  # the fetched tile -> shared
                            if it * NT + tx < BK * DV:
                                for w in T.vectorized(VEC):
                                    k_s[(it * NT + tx) * VEC + w] = kf_r[it * VEC + w]
                                for w in T.vectorized(VEC):
                                    v_s[(it * NT + tx) * VEC + w] = vf_r[it * VEC + w]
                        T.tvm_storage_sync("shared")
                        if kt + 1 < kv_tiles(q0):  # the next tile's loads in flight while this one is used
                            fetch(k, v, kf_r, vf_r, g, tx, kt + 1)
                        # ---- S = Q K^T into P, and the tile's max per row
                        for i in T.unroll(TQ):
                            t_r[i] = neg
                        for jo in range(BK // KU):
                            for e in T.unroll(KU * TQ):
                                for w in T.vectorized(VEC):
                                    s_r[e * VEC + w] = zero
                            for dv in T.unroll(DV):
                                for u in T.unroll(KU):
                                    for w in T.vectorized(VEC):
                                        x_r[u * VEC + w] = k_s[((jo * KU + u) * DV + dv) * VEC + w]
                                for u in T.unroll(KU):
                                    for i in T.unroll(TQ):
                                        for w in T.vectorized(VEC):
                                            s_r[(u * TQ + i) * VEC + w] = s_r[(u * TQ + i) * VEC + w] + q_r[(i * DV + dv) * VEC + w] * x_r[u * VEC + w]
                            for u in T.unroll(KU):
                                for i in T.unroll(TQ):
                                    for w in T.vectorized(VEC):  # the lanes' partial sums, added
                                        c_r[w] = s_r[(u * TQ + i) * VEC + w]
                                    for w in T.unroll(1, VEC):
                                        c_r[0] = c_r[0] + c_r[w]
                                    if visible(kt * BK + jo * KU + u, q0 + i * NT + tx):
                                        t_r[i] = T.max(t_r[i], c_r[0])
                                        p_s[(jo * KU + u) * BQ + i * NT + tx] = c_r[0]
                                    else:
                                        p_s[(jo * KU + u) * BQ + i * NT + tx] = neg
                        # ---- online softmax: rescale O and l to the new max once per tile
                        for i in T.unroll(TQ):
                            t_r[i] = T.max(m_r[i], t_r[i])
                            l_r[i] = l_r[i] * T.exp2(m_r[i] - t_r[i])
                            for dv in T.unroll(DV):
                                for w in T.vectorized(VEC):
                                    o_r[(i * DV + dv) * VEC + w] = o_r[(i * DV + dv) * VEC + w] * T.exp2(m_r[i] - t_r[i])
                            m_r[i] = t_r[i]
                        # ---- O += P V
                        for jo in range(BK // KU):
                            for u in T.unroll(KU):
                                for i in T.unroll(TQ):
                                    t_r[i] = T.exp2(p_s[(jo * KU + u) * BQ + i * NT + tx] - m_r[i])
                                    l_r[i] = l_r[i] + t_r[i]
                                for dv in T.unroll(DV):
                                    for w in T.vectorized(VEC):
                                        x_r[w] = v_s[((jo * KU + u) * DV + dv) * VEC + w]
                                    for i in T.unroll(TQ):
                                        for w in T.vectorized(VEC):
                                            o_r[(i * DV + dv) * VEC + w] = o_r[(i * DV + dv) * VEC + w] + t_r[i] * x_r[w]
                        T.tvm_storage_sync("shared")
                    for i in T.unroll(TQ):
                        if q0 + i * NT + tx < N:
                            for dv in T.unroll(DV):
                                for w in T.vectorized(VEC):
                                    o[at(spec.out, g, N, q0 + i * NT + tx, dv * VEC) + w] = o_r[(i * DV + dv) * VEC + w] * (one / l_r[i])

    return attention.with_attr(ATTR, spec.to_attr()).with_attr("tirx.is_scheduled", True)


# Per head_dim, where whole rows win over websd/kernels/attention.py's TILES, measured in the
# UNet's profile on an H200 (bench/results/rows/): head dim 40 (4096 tokens) 15.1 -> 8.9 ms a step
# in WebGPU, 9.5 -> 8.6 natively, with 128 rows of one invocation each (64 rows: as fast; two rows
# an invocation: faster natively, slower in WebGPU). Head dims 80 and up keep the tiles: their
# rows take 240+ registers (NVCC) and ran slower natively.
ROWS: dict[int, RowConfig] = {40: RowConfig(BQ=128, BK=16, TQ=1)}
