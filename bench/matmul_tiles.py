"""The UNet built once per matmul tile, to measure the tiles of websd.schedules.matmul against
each other on the GPU (every matmul and convolution with the same tile):

    python3 bench/matmul_tiles.py [--config C] TILE...   here, after `doit config=C dist`

builds, from the config's legalized UNet through the real stages (apply_db with the tile forced,
memory_plan, the cuda and webgpu builds), bench/.carry/{cuda/unet-tile-T.so.xz,
webgpu/unet-tile-T.wasm.xz} (no wasm for a tile of CUDA_ONLY): UNet variants that `bench/gpu_bench.sh C tile-T...` times and
profiles beside the build itself (whose tiles the rule chose per kernel).
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_variant(config_file: Path, tile: str, carry: Path) -> None:
    from stages import apply_db, build, build_runtime, build_wasm, memory_plan
    from websd.config import load_config
    from websd.paths import Layout
    from websd.schedules.matmul import CUDA_ONLY

    config = load_config(config_file)
    layout = Layout(config.build_key)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for target in ("cuda",) if tile in CUDA_ONLY else ("cuda", "webgpu"):
            database = apply_db.database_files(config.database_path, target)
            apply_db.apply_db(layout.legalized("unet"), target, database, True, tmp / "scheduled.json", matmul_tile=tile)
            memory_plan.memory_plan(tmp / "scheduled.json", tmp / "planned.json", tmp / "memory.json")
            if target == "cuda":
                library = tmp / "unet.so"
                build.build(tmp / "planned.json", "cuda", library)
            else:
                library = tmp / "unet.wasm"
                build_wasm.build_wasm(tmp / "planned.json", build_runtime.runtime_dir(), library, tmp / "stats.json")
            packed = carry / target / f"unet-tile-{tile}{library.suffix}.xz"
            packed.parent.mkdir(parents=True, exist_ok=True)
            with library.open("rb") as src, lzma.open(packed, "wb", preset=9) as dst:
                shutil.copyfileobj(src, dst)
    print(f"matmul_tiles: tile {tile}: {time.time() - started:.0f} s")


def main() -> None:
    from websd.schedules.matmul import TILES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "sd-v1-5-random.yaml")
    parser.add_argument("--carry", type=Path, default=ROOT / "bench" / ".carry")
    parser.add_argument("tiles", nargs="+", choices=TILES)
    args = parser.parse_args()
    for tile in args.tiles:
        build_variant(args.config, tile, args.carry)


if __name__ == "__main__":
    main()
