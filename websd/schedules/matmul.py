"""Matmul-like kernels (matmuls and every convolution, as an implicit GEMM) with tiles chosen per
GEMM shape: dlight's schedule with our tiles for matmuls, a schedule of our own for convolutions.

dlight's Matmul rule normalizes such a kernel to C[S, I, J] += A[S, I, K] * B[S, J, K] and tiles
it with one configuration per target. On webgpu that is its generic one: 8x8 threads of 4x4
outputs (a 32x32 tile of C per workgroup) whose staged tiles are read down a column at a stride
of 32 words, so every thread of a warp reads the same bank of workgroup memory. This rule keeps
dlight's schedule (shared-memory staging, micro-tiles in registers, fused epilogue) with padded
rows (storage_align) and a tile chosen from the kernel's extents.

How the tiles compare was measured on an H200 (bench/matmul_tiles.py builds a component with one
tile everywhere, and bench/gpu_bench.sh profiles it beside the chosen tiles:
bench/results/tile-sweep/): 64x64 was the fastest of dlight's tiles for most UNet kernels on
webgpu and cuda alike, 1.3-2.5x faster than dlight's generic tile on webgpu; 32x32 beat 64x64
only on products too small to give every multiprocessor a 64x64 tile and not deep enough to make
up for it (e.g. 512x1280 outputs of depth 1280: 2.6 against 2.95 ms). Our vec4 schedule
(`schedule_vector_columns`) beat every dlight tile on every convolution, on both targets: the
UNet's convolutions took 50.0 ms a step in WebGPU and 34.3 natively with it, against 68.5 and
47.7 (tile-sweep/vec4-columns/, 2026-11-27 21:44 UTC), and the VAE decoder's 126.4 and 96.3 ms
a decode against 168.2 and 110.7 with 128x128 tiles on its widest (21:54 UTC, bench/results/).
It lost on the UNet's matmuls (e.g. 3.46 -> 3.88 ms in WebGPU), whose A is contiguous along the
depth: they keep dlight's schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import dlight as dl

# The tiles this rule chooses among, all within WebGPU's default limits (256 invocations and
# 16 KiB of workgroup memory), named rows x columns of C per workgroup: block_size threads per
# axis, each computing vthread * micro_size outputs of it.
Config = dl.gpu.Matmul.Config
TILES = {
    # dlight's own configurations, what every kernel got before this rule: its generic one
    # (webgpu) and its CUDA one
    "dlight-generic": Config(block_size_x=8, block_size_y=8, micro_size_x=4, micro_size_y=4, micro_size_k=8),
    "dlight-cuda": Config(block_size_x=8, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=16,
                          vector_size=2, storage_align=True),
    # Ours. Each row of a staged tile is padded (storage_align): threads that read a column of
    # it hit different banks of workgroup memory. Stages 16 deep are faster than 8 on the H200
    # (UNet step 134.6 against 143.5 ms in WebGPU, 97.3 against 101.1 natively, in one run:
    # bench/results/gpu-bench.md), but Chrome's SwiftShader adapter (a CPU) loses its device on
    # kernels 16 deep: 32x32, the tile of small products and so of the tiny default model's
    # every GEMM, stays 8 deep, and the page works there. Loops of more than 64 steps stay
    # rolled (unroll=64): fully unrolled, 16 deep was slower (136.3 ms in WebGPU). Measured and
    # dropped (bench/results/tile-sweep/): 8x8 outputs a thread, 64x64 fully unrolled, 128x64
    # and 128x128 (two virtual threads per axis; 128x128 led on the VAE decoder until our vec4
    # schedule), interleaved outputs (virtual threads of one output each, for conflict-free
    # reads of the staged rows) at 32x32, 64x64, 128x64 and 128x128.
    "32x32": Config(block_size_x=8, block_size_y=8, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64-k16": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=16,
                        storage_align=True, unroll=64),
}
# Tiles of our own schedule (`schedule_vector_columns`), 64x64 on 16 x 16 threads: name -> depth
# of its stages (16: unlike dlight's schedule 16 deep, SwiftShader runs it).
VECTOR_TILES = {"64x64-vec4-k16": 16}
# dlight's CUDA configuration vectorizes loads in a form WebGPU's codegen rejects for some kernels.
CUDA_ONLY = ("dlight-cuda",)
# What choose_tile picks from.
CHOSEN_FROM = ("32x32", "64x64-k16", "64x64-vec4-k16")
# Workgroups that keep a large GPU busy: two per multiprocessor of an H100 or H200 (132).
MIN_WORKGROUPS = 264
# Products deeper than this keep 64x64 ahead even with few workgroups (measured: 128x1280
# outputs of depth 11520, 40 workgroups, 11.7 against 14.7 ms at 32x32).
DEEP = 5120


@dataclass(frozen=True)
class Gemm:
    """A kernel's normalized extents: S batched I x K by K x J products; `convolution`: an
    implicit GEMM (A gathered from an image through the window), not a matmul."""

    batch: int
    rows: int
    cols: int
    depth: int
    convolution: bool = False


def normalized(func):
    """(schedule, its product block) with the product as dlight's Matmul rule normalizes it,
    C[S, I, J] += A[S, I, K] * B[S, J, K], its operands reindexed to that layout; None for
    any other kernel."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu import matmul

    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
    except ValueError:  # not one root block: hand-written kernels (e.g. attention)
        return None
    reductions = matmul.get_reduction_blocks(sch, blocks)
    if reductions is None or not matmul.get_index_map(sch.get(reductions[0])):
        return None
    main = reductions[0]
    reindexed = [sch.reindex(main, buffer) for buffer in (("read", 0), ("read", 1), ("write", 0))]
    block_map, *buffer_maps = matmul.get_index_map(sch.get(main))
    for block, buffer, index_map in zip(reindexed, (("write", 0), ("write", 0), ("read", 0)), buffer_maps):
        sch.transform_layout(block, buffer, index_map)
    sch.transform_block_layout(main, block_map)
    return sch, main


def gemm_of(func) -> Gemm | None:
    """The normalized GEMM of a matmul-like PrimFunc, as dlight's Matmul rule sees it; None for
    any other kernel."""
    from tvm import tirx

    if (found := normalized(func)) is None:
        return None
    sch, main = found
    extents = [iv.dom.extent for iv in sch.get(main).iter_vars]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None  # dynamic shapes: dlight's configuration
    # Relax legalizes every convolution to a block named conv2d_*, and SplitK names its own so.
    return Gemm(*(int(e) for e in extents), convolution=sch.get(main).name_hint.startswith("conv2d"))


def tile_extent(config: Config) -> tuple[int, int]:
    """Rows (I) and columns (J) of C one workgroup computes: dlight tiles I with its x
    configuration and J with its y."""
    return (config.block_size_x * config.vthread_x * config.micro_size_x,
            config.block_size_y * config.vthread_y * config.micro_size_y)


def workgroups(gemm: Gemm, config: Config) -> int:
    rows, cols = tile_extent(config)
    return gemm.batch * -(-gemm.rows // rows) * -(-gemm.cols // cols)


def choose_tile(gemm: Gemm) -> str:
    """Products too small to give every multiprocessor a 64x64 tile (fewer than MIN_WORKGROUPS)
    and of depth at most DEEP: 32x32, four times the workgroups. Other convolutions: our vec4
    schedule (`schedule_vector_columns`), 16 deep; other matmuls: 64x64, 16 deep. On cuda as on
    webgpu: each choice won on both (the tile sweeps in bench/results/tile-sweep/)."""
    if workgroups(gemm, TILES["64x64"]) < MIN_WORKGROUPS and gemm.depth <= DEEP:
        return "32x32"
    if gemm.convolution:
        return "64x64-vec4-k16"
    return "64x64-k16"


def schedule_vector_columns(func, gemm: Gemm, depth: int, threads: int = 16, lanes: int = 4):
    """Our implicit-GEMM schedule for WebGPU's codegen: each thread computes 4 rows x 4 columns of
    C as 4 vec4 registers, its rows interleaved (row ti + 16 * i) and its columns contiguous. B
    is staged k-major ([k][column]) and only ever read or written as vec4, so the codegen types
    it array<vec4<f32>>: each step over k reads one vec4 of B and 4 scalars of A (staged
    k-major too, consecutive rows per warp: no bank conflicts) for 4 vec4 multiply-adds, where
    dlight's schedule reads 8 scalars for 16 scalar multiply-adds. (The k-major schedule of
    commit 666b0ae also typed A as vec4, but it read its vec4s into scalar registers, which the
    codegen splits into one load per lane, each at an index divided by 4.) `gemm` is
    gemm_of(func): a convolution's A (an image) is fetched along its rows, a matmul's along its
    depth, the way each is contiguous in memory."""
    from tvm.s_tir.dlight.gpu import matmul

    sch, main = normalized(func)
    sch.pad_einsum(main, [1, threads * lanes, threads * lanes, depth])  # whole tiles
    batch, i, j, k = sch.get_loops(main)
    bi, vi, ti = sch.split(i, [None, lanes, threads])
    bj, tj, vj = sch.split(j, [None, threads, lanes])
    ko, ki = sch.split(k, [None, depth])
    sch.reorder(bj, bi, vi, ti, tj, ko, ki, vj)
    sch.bind(sch.fuse(batch, bj), "blockIdx.y")
    sch.bind(bi, "blockIdx.x")
    sch.bind(vi, "vthread.x")  # one vec4 register of C per row: no 49-row register box
    sch.bind(ti, "threadIdx.x")
    sch.bind(tj, "threadIdx.y")
    sch.vectorize(vj)
    sch.annotate(ti, "pragma_auto_unroll_max_step", 64)
    sch.annotate(ti, "pragma_unroll_explicit", 1)
    c_local = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(c_local, tj, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(c_local)[-1])

    def stage(operand: int, vector: bool, walk_rows: bool):
        """Stage an operand k-major; the threads walk the axis that is contiguous in memory."""
        shared = sch.cache_read(main, operand, "shared")
        sch.compute_at(shared, ko, preserve_unit_loops=True)
        sch.transform_layout(shared, ("write", 0), lambda s, x, kk: (s, kk, x))
        s, x, kk = sch.get_loops(shared)[-3:]
        if vector:
            x, lane = sch.split(x, [None, lanes])
        order = (kk, x) if walk_rows else (x, kk)
        sch.reorder(s, *order, *([lane] if vector else []))
        ty, tx, _ = sch.split(sch.fuse(*order), [threads, threads, None])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        if vector:
            sch.vectorize(lane)
        # rows padded by a vec4 (B) or a word (A): a warp's stores down a column spread over banks
        sch.storage_align(shared, 0, axis=1, factor=32, offset=lanes if vector else 1)
        matmul.auto_inline_producers(sch, shared)

    stage(0, vector=False, walk_rows=gemm.convolution)  # an image's pixels, a matmul's depth
    stage(1, vector=True, walk_rows=False)  # a weight's depth
    sch.decompose_reduction(main, ko)
    matmul.auto_inline_consumer_chain(sch, c_local)
    return sch


class _Tiled(dl.gpu.Matmul):
    """dlight's Matmul rule with one given configuration."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config

    def get_configs(self, target):
        return self.config


class Matmul(dl.gpu.Matmul):
    """Every matmul-like kernel with the tile `choose_tile` picks for it, or with one tile for
    every kernel (`tile`, a key of TILES or VECTOR_TILES: for measuring one tile against
    another); kernels whose GEMM it cannot read get dlight's rule with its own configuration."""

    def __init__(self, tile: str | None = None):
        super().__init__()
        if tile is not None and tile not in (*TILES, *VECTOR_TILES):
            raise ValueError(f"unknown matmul tile {tile!r} (allowed: {', '.join((*TILES, *VECTOR_TILES))})")
        self.tile = tile

    def apply(self, func, target, tunable):
        gemm = gemm_of(func)
        if gemm is None:  # not a GEMM we can read: dlight's rule decides, with its configuration
            return super().apply(func, target, tunable)
        tile = self.tile or choose_tile(gemm)
        if tile in VECTOR_TILES:
            return schedule_vector_columns(func, gemm, VECTOR_TILES[tile])
        return _Tiled(TILES[tile]).apply(func, target, tunable)
