"""Matmul-like kernels (matmuls and every convolution, as an implicit GEMM) with tiles chosen per
GEMM shape.

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
depth 1280: 2.6 against 2.95 ms). Not yet used: on the VAE decoder's far larger convolutions
(65,536 rows and more), 128x128 was ahead (its convolutions took 155 ms in WebGPU and 108 ms
natively with 128x128, against 186 and 139 with 64x64, in two runs on the same card).
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
    # rolled (unroll=64): fully unrolled, 16 deep was slower (136.3 ms in WebGPU).
    "32x32": Config(block_size_x=8, block_size_y=8, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                    storage_align=True),
    "64x64-k16": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=16,
                        storage_align=True, unroll=64),
    "64x64-k16-unrolled": Config(block_size_x=16, block_size_y=16, micro_size_x=4, micro_size_y=4, micro_size_k=16,
                                 storage_align=True),
    "128x64": Config(block_size_x=16, block_size_y=16, vthread_x=2, micro_size_x=4, micro_size_y=4, micro_size_k=8,
                     storage_align=True),
    "128x128": Config(block_size_x=16, block_size_y=16, vthread_x=2, vthread_y=2, micro_size_x=4, micro_size_y=4,
                      micro_size_k=8, storage_align=True),
    # 8x8 outputs a thread: each value read from workgroup memory feeds 8 multiply-adds, not 4.
    "64x64-8x8": Config(block_size_x=8, block_size_y=8, micro_size_x=8, micro_size_y=8, micro_size_k=8,
                        storage_align=True),
    "128x128-8x8": Config(block_size_x=16, block_size_y=16, micro_size_x=8, micro_size_y=8, micro_size_k=8,
                          storage_align=True),
}
# dlight's CUDA configuration vectorizes loads in a form WebGPU's codegen rejects for some kernels.
CUDA_ONLY = ("dlight-cuda",)
# What choose_tile picks from.
CHOSEN_FROM = ("32x32", "64x64-k16")
# Workgroups that keep a large GPU busy: two per multiprocessor of an H100 or H200 (132).
MIN_WORKGROUPS = 264
# Products deeper than this keep 64x64 ahead even with few workgroups (measured: 128x1280
# outputs of depth 11520, 40 workgroups, 11.7 against 14.7 ms at 32x32).
DEEP = 5120


@dataclass(frozen=True)
class Gemm:
    """A kernel's normalized extents: S batched I x K by K x J products."""

    batch: int
    rows: int
    cols: int
    depth: int


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
    return Gemm(*(int(e) for e in extents))


def tile_extent(config: Config) -> tuple[int, int]:
    """Rows (I) and columns (J) of C one workgroup computes: dlight tiles I with its x
    configuration and J with its y."""
    return (config.block_size_x * config.vthread_x * config.micro_size_x,
            config.block_size_y * config.vthread_y * config.micro_size_y)


def workgroups(gemm: Gemm, config: Config) -> int:
    rows, cols = tile_extent(config)
    return gemm.batch * -(-gemm.rows // rows) * -(-gemm.cols // cols)


def choose_tile(gemm: Gemm) -> str:
    """64x64 (16 deep), unless that leaves fewer than MIN_WORKGROUPS workgroups for a product
    of depth at most DEEP: then 32x32, four times the workgroups."""
    if workgroups(gemm, TILES["64x64"]) < MIN_WORKGROUPS and gemm.depth <= DEEP:
        return "32x32"
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
            tile = choose_tile(gemm)
        return _Tiled(TILES[tile]).apply(func, target, tunable)
