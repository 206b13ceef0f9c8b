"""Matmul-like kernels (matmuls and every convolution, as an implicit GEMM) with tiles chosen per
GEMM shape and target.

dlight's Matmul rule normalizes such a kernel to C[S, I, J] += A[S, I, K] * B[S, J, K] and tiles
it with one configuration per target. On webgpu that is its generic one: 8x8 threads of 4x4
outputs (a 32x32 tile of C per workgroup) whose staged tiles are read down a column at a stride
of 32 words, so every thread of a warp reads the same bank of workgroup memory. This rule keeps
dlight's schedule (shared-memory staging, micro-tiles in registers, fused epilogue) with padded
rows (storage_align) and a tile chosen from the kernel's extents.

How the tiles compare was measured on an H200 (bench/matmul_tiles.py builds the UNet with one
tile everywhere; bench/results/tile-sweep/profile-unet-variants.md, stages 16 deep then): 64x64
was the fastest tile for most UNet kernels on webgpu and cuda alike, 1.3-2.5x faster than
dlight's generic tile on webgpu; 128x64 and 128x128 (two virtual threads per axis) lost almost
everywhere in the UNet; 32x32 beat 64x64 only on products too small to give every
multiprocessor a 64x64 tile and not deep enough to make up for it (e.g. 512x1280 outputs of
depth 1280: 2.6 against 2.95 ms). The VAE decoder's far wider products are another matter:
there 128x128 won on both targets (`wide`).

Interleaving each thread's outputs (bench/results/tile-sweep/interleaved/, 2026-11-27 21:07 UTC)
removes the two-way bank conflicts of 4 consecutive rows a thread. Natively that made the UNet's
convolutions faster (128x64 interleaved: conv2d_split5 6.19 -> 5.58 ms, all convolutions about 5
ms a step), so cuda takes it for them; its matmuls stayed faster with 64x64. In Dawn it won
nowhere (UNet step 135.9 ms, 138.4 with 64x64 interleaved everywhere): there the kernels are not
bound by workgroup-memory conflicts.
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
    # dropped (bench/results/tile-sweep/): 8x8 outputs a thread, 64x64 fully unrolled,
    # interleaved outputs at 32x32, 64x64 and 128x128, and 128x64 16 deep (on the VAE decoder).
    "32x32": Config(block_size_x=8, block_size_y=8, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64-k16": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=16,
                        storage_align=True, unroll=64),
    "128x64": Config(block_size_x=16, block_size_y=16, vthread_x=2, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                     storage_align=True),
    "128x128": Config(block_size_x=16, block_size_y=16, vthread_x=2, vthread_y=2, micro_size_x=4, micro_size_y=4,
                      micro_size_k=8, storage_align=True),
    # Each thread's outputs interleaved (virtual threads of one output each): the 16 threads of
    # a warp that read a column of a staged tile read rows 17 words apart, 16 different banks.
    # With 4 consecutive rows a thread, they are 68 words apart: 8 banks, two reads each.
    "128x64-interleaved": Config(block_size_x=16, block_size_y=16, vthread_x=8, vthread_y=4, micro_size_x=1,
                                 micro_size_y=1, micro_size_k=16, storage_align=True, unroll=64),
}
# dlight's CUDA configuration vectorizes loads in a form WebGPU's codegen rejects for some kernels.
CUDA_ONLY = ("dlight-cuda",)
# What choose_tile picks from, per target.
CHOSEN_FROM = {"webgpu": ("32x32", "64x64-k16", "128x128"), "cuda": ("32x32", "64x64-k16", "128x64-interleaved", "128x128")}
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


def gemm_of(func) -> Gemm | None:
    """The normalized GEMM of a matmul-like PrimFunc, as dlight's Matmul rule sees it; None for
    any other kernel."""
    from tvm import s_tir, tirx
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
    for buffer in (("read", 0), ("read", 1), ("write", 0)):
        sch.reindex(main, buffer)
    sch.transform_block_layout(main, matmul.get_index_map(sch.get(main))[0])
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


def wide(gemm: Gemm) -> bool:
    """Whether 128x128 tiles pay: a product of 8,192 rows or more (all batches), 128 to 512
    columns in whole tiles, and depth 1,152 or more; a tile reads its rows of A once for 128
    columns, not twice for 64. The VAE decoder's convolutions at 512x512 are such products
    (8,192 to 262,144 rows): with 128x128 its decode took 170.3 ms in WebGPU and 111.5
    natively, against 190.8 and 152.2 with 64x64 16 deep, and 181.6 and 136.7 with 128x64
    (bench/results/tile-sweep/vae/, 2026-11-27 21:23 UTC). Shallow products (depth 512 and
    less) and narrow ones (the 3 channels of RGB) were faster with 128x64 interleaved, and the
    UNet's widest (8,192 x 640, depth 5,760) with 64x64 in WebGPU (4.35 against 4.96 ms in the
    first sweep, bench/results/tile-sweep/profile-unet-variants.md: fused_conv2d29_add37)."""
    return gemm.batch * gemm.rows >= 8192 and gemm.cols in (128, 256, 384, 512) and gemm.depth >= 1152


def choose_tile(gemm: Gemm, target: str) -> str:
    """64x64 (16 deep), unless that leaves fewer than MIN_WORKGROUPS workgroups for a product
    of depth at most DEEP: then 32x32, four times the workgroups; 128x128 for `wide` products.
    Natively (cuda), other convolutions take 128x64 with interleaved outputs instead of 64x64."""
    if workgroups(gemm, TILES["64x64"]) < MIN_WORKGROUPS and gemm.depth <= DEEP:
        return "32x32"
    if wide(gemm):
        return "128x128"
    if target == "cuda" and gemm.convolution:
        return "128x64-interleaved"
    return "64x64-k16"


class _Tiled(dl.gpu.Matmul):
    """dlight's Matmul rule with one given configuration."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config

    def get_configs(self, target):
        return self.config


class Matmul(dl.gpu.Matmul):
    """dlight's Matmul rule, tiled per kernel by `choose_tile`, or with one tile for every kernel
    (`tile`, a key of TILES: for measuring one tile against another)."""

    def __init__(self, tile: str | None = None):
        super().__init__()
        if tile is not None and tile not in TILES:
            raise ValueError(f"unknown matmul tile {tile!r} (allowed: {', '.join(TILES)})")
        self.tile = tile

    def apply(self, func, target, tunable):
        tile = self.tile
        if tile is None:
            gemm = gemm_of(func)
            if gemm is None:  # not a GEMM we can read: dlight's rule decides, with its configuration
                return super().apply(func, target, tunable)
            tile = choose_tile(gemm, target.kind.name)
        return _Tiled(TILES[tile]).apply(func, target, tunable)
