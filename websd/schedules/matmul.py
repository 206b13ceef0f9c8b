"""Matmul-like kernels (matmuls and every convolution, as an implicit GEMM) with tiles chosen per
GEMM shape (`choose_tile`), all in a schedule of our own (`schedule_vector_tiles`): 64x64 tiles
16 deep for most, 128x64 for the widest, 32x32 tiles 32 deep where 64-wide ones would pad.

dlight's Matmul rule normalizes such a kernel to C[S, I, J] += A[S, I, K] * B[S, J, K] and tiles
it with one configuration per target. On webgpu that is its generic one: 8x8 threads of 4x4
outputs (a 32x32 tile of C per workgroup) whose staged tiles are read down a column at a stride
of 32 words, so every thread of a warp reads the same bank of workgroup memory, and as scalars.
Our schedule keeps its structure (operands staged in workgroup memory, outputs in registers,
epilogue fused) but stages both operands k-major and touches them only as vec4, so that WebGPU's
codegen types them `array<vec4<f32>>` and every read of workgroup memory is one 16-byte load.

How the tiles compare was measured on an H200 (bench/matmul_tiles.py builds a component with one
tile everywhere, and bench/gpu_bench.sh profiles it beside the chosen tiles:
bench/results/tile-sweep/). 64x64 was the fastest of dlight's tiles for most UNet kernels on
webgpu and cuda alike, 1.3-2.5x faster than dlight's generic tile on webgpu. Our first vec4
schedule read B as vec4 and A as 4 scalars (rows interleaved): it beat every dlight tile on
every convolution (the UNet's took 50.0 ms a step in WebGPU and 34.3 natively, against 68.5 and
47.7: tile-sweep/vec4-columns/) but lost on the matmuls. Reading A as vec4 too (a thread's rows
4 consecutive ones) won on both (tile-sweep/vec4x4/, 2026-11-28 04:03 UTC): in WebGPU the UNet's
matmuls from 31.7 to 30.1 ms a step and its convolutions from 50.1 to 49.3, with 128x64 tiles
on the widest products (e.g. 8192 x 2560 of depth 320: 3.46 -> 2.91 ms); 128x128 tiles (8 deep,
to fit 16 KiB) lost everywhere (137.6 against 108.5 ms a step). With the rule below the UNet
step went from 111.0 to 105.3 ms in WebGPU (with the weight transposes gone too) and the VAE
decode from 126.5 to 115.9 (tile-sweep/vec4x4-rule/, 04:28 UTC). Products with few rows or
columns took dlight's 32x32 tile, 8 deep: a workgroup's loop over a depth of 768 was 96 steps
of waiting on memory. Our schedule on 8x8 threads, 32 deep, made it 24 (results/small-tiles/,
10:42 UTC): the text encoder's matmuls from 6.2 to 3.6 ms in WebGPU, the UNet's products of the
154 text rows from 2.5 to 1.35 ms a step, its Winograd products at 8x8 latents (32 columns)
from 3.9 to 2.4.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import dlight as dl

# dlight's schedule's tiles (32x32 chosen by the rule, 64x64 the unit that workgroup counts are
# taken in, the others for measuring against), all within WebGPU's default limits (256
# invocations and 16 KiB of workgroup memory), named rows x columns of C per workgroup:
# block_size threads per axis, each computing vthread * micro_size outputs of it.
Config = dl.gpu.Matmul.Config
TILES = {
    # dlight's own configurations, what every kernel got before this rule: its generic one
    # (webgpu) and its CUDA one
    "dlight-generic": Config(block_size_x=8, block_size_y=8, micro_size_x=4, micro_size_y=4, micro_size_k=8),
    "dlight-cuda": Config(block_size_x=8, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=16,
                          vector_size=2, storage_align=True),
    # Ours, padded rows (storage_align): threads that read a column of a staged tile hit
    # different banks of workgroup memory. 32x32 is 8 deep: Chrome's SwiftShader adapter (a CPU)
    # loses its device on dlight's kernels 16 deep. Measured and dropped
    # (bench/results/tile-sweep/): 8x8 outputs a thread, 64x64 fully unrolled, 128x64 and
    # 128x128 (two virtual threads per axis), interleaved outputs at 32x32, 64x64, 128x64 and
    # 128x128, 64x64 16 deep (now our schedule's).
    "32x32": Config(block_size_x=8, block_size_y=8, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
}


@dataclass(frozen=True)
class VectorTile:
    """A tile of our own schedule (`schedule_vector_tiles`) on `threads` x `threads` threads,
    `depth` deep: each thread computes `rows` x 4 of C (rows a multiple of 4)."""

    rows: int = 4
    threads: int = 16
    depth: int = 16


# name -> tile (SwiftShader runs 64x64 16 deep, unlike dlight's schedule 16 deep, but loses its
# device on 128x64: tests/test_schedules.py)
VECTOR_TILES = {"64x64-vec4x4-k16": VectorTile(), "128x64-vec4x4-k16": VectorTile(rows=8),
                "32x32-vec4x4-k32": VectorTile(threads=8, depth=32)}
# dlight's CUDA configuration vectorizes loads in a form WebGPU's codegen rejects for some kernels.
CUDA_ONLY = ("dlight-cuda",)
# What choose_tile picks from.
CHOSEN_FROM = ("32x32-vec4x4-k32", "64x64-vec4x4-k16", "128x64-vec4x4-k16")
# Workgroups that keep a large GPU busy: two per multiprocessor of an H100 or H200 (132); SplitK
# (websd/passes/split_k.py) splits the depth of products with fewer.
MIN_WORKGROUPS = 264
# Products of at least this many 64x64 tiles take 128x64 ones (measured on the H200: the UNet's
# products of 1280 to 5120 tiles, e.g. 8192 x 2560 of depth 320: 3.31 -> 2.91 ms in WebGPU; 640
# tiles and fewer lost, e.g. 8192 x 320 of depth 2880: 3.57 -> 3.77).
WIDE = 1280
# 32x32 where 64-wide tiles pad at least this much more of the rows or columns than 32-wide
# ones (154 rows: 19.8% against 3.8%).
WASTE = 0.15
# On webgpu, matmuls of at most this many 64x64 tiles (1.2 a multiprocessor of an H200) take
# 32x32 ones, 4 times the workgroups. Measured with 32x32 on every GEMM of the UNet (H200,
# 2026-11-28 11:31 UTC, results/winograd/1131-projections/): each such matmul ran faster in
# WebGPU (512 x 1280 of depth 5120: 2.76 -> 2.18 ms; all of them: 4.0 ms less a step), those of
# 240 and 320 tiles slower, and the implicit-GEMM convolutions slower at every size; natively
# only the split ones were faster (0.5 ms more a step for all of them).
FEW = 160


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


def waste(extent: int, tile: int) -> float:
    """The share of a product's rows (or columns) that tiles of `tile` of them pad."""
    return 1 - extent / (-(-extent // tile) * tile)


def choose_tile(gemm: Gemm, target: str) -> str:
    """Our vec4 schedule (`schedule_vector_tiles`) with vec4 reads of both operands: 64x64 tiles
    16 deep for most products; 128x64 for products of at least WIDE 64x64 tiles and more than 64
    rows; 32x32 tiles 32 deep where 64-wide tiles pad WASTE more of the rows or columns than
    32-wide ones (the 77 text rows of one prompt and 154 of two, the Winograd products of 8x8
    latents: 32 = 2 x 4 x 4 tiles) and, on webgpu, for the matmuls of at most FEW 64x64 tiles,
    where the depth is a multiple of 32.
    `target`: a websd.targets name (the tile sweeps in bench/results/tile-sweep/ measured both)."""
    # (32 deep only where the depth is whole steps: Chrome's SwiftShader adapter loses its device
    # compiling the 32x32 kernels of depths 40 and 50, tests/test_schedules.py)
    if gemm.depth % 32 == 0:
        if any(waste(extent, 64) - waste(extent, 32) >= WASTE for extent in (gemm.rows, gemm.cols)):
            return "32x32-vec4x4-k32"
        if target == "webgpu" and not gemm.convolution and workgroups(gemm, TILES["64x64"]) <= FEW:
            return "32x32-vec4x4-k32"
    if workgroups(gemm, TILES["64x64"]) >= WIDE and gemm.rows > 64:  # (not 128 rows for a few filters)
        return "128x64-vec4x4-k16"
    return "64x64-vec4x4-k16"


def schedule_vector_tiles(func, gemm: Gemm, tile: VectorTile, lanes: int = 4):
    """Our implicit-GEMM schedule for WebGPU's codegen: each thread computes tile.rows x 4 of C,
    a vec4 register per row, its rows in groups of 4 consecutive ones (groups beyond the first are
    virtual threads, so that each group's reads stay consecutive across a warp). Both operands
    are staged k-major ([k][row], [k][column]) and only ever written and read as vec4, so the
    codegen types them array<vec4<f32>>: each step over k reads one vec4 of A and one of B per 4
    rows for 4 vec4 multiply-adds (16 multiply-adds), where dlight's schedule reads 8 scalars of
    workgroup memory for 16 scalar multiply-adds. A convolution's A is gathered from the image
    a pixel at a time into registers and stored to workgroup memory as one vec4. (The k-major
    schedule of commit 666b0ae typed A as vec4 too, but read its vec4s into scalar registers lane
    by lane, which the codegen prints as one load per lane, each at an index divided by 4.)
    `gemm` is gemm_of(func): a convolution's A (an image) is fetched along its rows, a matmul's
    along its depth, the way each is contiguous in memory."""
    from tvm.s_tir.dlight.gpu import matmul

    sch, main = normalized(func)
    threads, depth = tile.threads, tile.depth
    sch.pad_einsum(main, [1, threads * tile.rows, threads * lanes, depth])  # whole tiles
    batch, i, j, k = sch.get_loops(main)
    bi, vo, ti, vi = sch.split(i, [None, tile.rows // lanes, threads, lanes])
    bj, tj, vj = sch.split(j, [None, threads, lanes])
    ko, ki = sch.split(k, [None, depth])
    sch.reorder(bj, bi, vo, ti, tj, ko, ki, vi, vj)
    sch.bind(sch.fuse(batch, bj), "blockIdx.y")
    sch.bind(bi, "blockIdx.x")
    sch.bind(vo, "vthread.x")
    sch.bind(ti, "threadIdx.x")
    sch.bind(tj, "threadIdx.y")
    sch.vectorize(vj)
    # Loops of at most 64 steps in all unrolled: the depth's 16 stay a loop (fully unrolled, the
    # UNet step took 105.8 against 105.3 ms in WebGPU, 72.3 against 74.5 natively:
    # bench/results/tile-sweep/vec4x4-rule/).
    sch.annotate(ti, "pragma_auto_unroll_max_step", 64)
    sch.annotate(ti, "pragma_unroll_explicit", 1)
    c_local = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(c_local, tj, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(c_local)[-1])

    def stage(operand: int, walk_rows: bool):
        """Stage an operand k-major as vec4s; the threads walk the axis that is contiguous in memory."""
        shared = sch.cache_read(main, operand, "shared")
        sch.compute_at(shared, ko, preserve_unit_loops=True)
        copy, gather = shared, None
        if operand == 0 and gemm.convolution:  # the image's pixels through registers: one vec4 store
            copy, gather = sch.cache_write(shared, 0, "local"), shared
        sch.transform_layout(copy, ("write", 0), lambda s, x, kk: (s, kk, x))
        s, x, kk = sch.get_loops(copy)[-3:]
        x, lane = sch.split(x, [None, lanes])
        order = (kk, x) if walk_rows else (x, kk)
        sch.reorder(s, *order, lane)
        ty, tx, _ = sch.split(sch.fuse(*order), [threads, threads, None])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(lane)
        # rows padded by a vec4: a warp's stores down a column spread over banks
        sch.storage_align(copy, 0, axis=1, factor=32, offset=lanes)
        if gather is not None:
            sch.compute_at(gather, tx, preserve_unit_loops=True)
        matmul.auto_inline_producers(sch, gather or copy)

    stage(0, walk_rows=gemm.convolution)  # an image's pixels, a matmul's depth
    stage(1, walk_rows=False)  # a weight's depth
    a_local = sch.cache_read(main, 0, "local")  # A's 4 rows of this k in a vec4 register, read as one
    sch.compute_at(a_local, ki, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(a_local)[-1])
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
        tile = self.tile or choose_tile(gemm, target.kind.name)
        if tile in VECTOR_TILES:
            return schedule_vector_tiles(func, gemm, VECTOR_TILES[tile])
        return _Tiled(TILES[tile]).apply(func, target, tunable)
