"""A component (the UNet unless told) built once per matmul tile, to measure the tiles of
websd.schedules.matmul against each other on the GPU (every matmul and convolution with the
same tile), or once per attention kernel config of one head dim:

    python3 bench/matmul_tiles.py [--config C] [--component COMPONENT] TILE...   here, after `doit config=C dist`
    python3 bench/matmul_tiles.py [--component COMPONENT] --attention D=BQ,BK,TQ,TK,DCS,TQO,BKV,THREADS|D=BQ,BK,TQ...

builds, from the config's legalized component through the real stages (apply_db with the tile
forced, memory_plan, the cuda and webgpu builds), bench/.carry/{cuda/COMPONENT-tile-T.so.xz,
webgpu/COMPONENT-tile-T.wasm.xz} (no wasm for a tile of CUDA_ONLY): variants that
`bench/gpu_bench.sh C COMPONENT-tile-T...` times and profiles beside the component's own build
(whose tiles the rule chose per kernel), e.g. vae_decoder-tile-128x64-vec4x4-k16. An attention config
(websd.kernels.attention.TileConfig's fields, or websd.kernels.row_attention.RowConfig's for
whole rows per invocation, checked) replaces the tables' for head dim D, the matmul tiles
staying the rule's: unet-attention-40-BQ64-BK32-... or unet-rows-40-BQ64-BK16-TQ1, say.
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


def build_variant(config_file: Path, component: str, name: str, carry: Path, tile: str | None = None,
                  attention_tiles: dict | None = None) -> None:
    """The component's build as variant `name`, with `tile` for every matmul (else the rule's
    per kernel) and `attention_tiles` (per head dim) for the flash attentions."""
    from stages import apply_db, build, build_runtime, build_wasm, memory_plan
    from websd.atomic import atomic_path
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
            apply_db.apply_db(layout.legalized(component), target, database, True, tmp / "scheduled.json",
                              matmul_tile=tile, attention_tiles=attention_tiles)
            memory_plan.memory_plan(tmp / "scheduled.json", tmp / "planned.json", tmp / "memory.json")
            if target == "cuda":
                library = tmp / f"{component}.so"
                build.build(tmp / "planned.json", "cuda", library)
            else:
                library = tmp / f"{component}.wasm"
                build_wasm.build_wasm(tmp / "planned.json", build_runtime.runtime_dir(), library, tmp / "stats.json")
            with atomic_path(carry / target / f"{component}-{name}{library.suffix}.xz") as packed, \
                    library.open("rb") as src, lzma.open(packed, "wb", preset=9) as dst:
                shutil.copyfileobj(src, dst)
    print(f"matmul_tiles: {component}-{name}: {time.time() - started:.0f} s")


def attention_tiles(text: str) -> tuple[str, dict]:
    """"D=BQ,BK,TQ,TK,DCS,TQO,BKV,THREADS" (tiles, websd.kernels.attention.TileConfig) or
    "D=BQ,BK,TQ" (whole rows, websd.kernels.row_attention.RowConfig) -> the variant's name and
    {D: config}, checked."""
    from websd.kernels.attention import TileConfig
    from websd.kernels.row_attention import RowConfig

    head_dim, _, values = text.partition("=")
    forms = {len(form.__dataclass_fields__): form for form in (TileConfig, RowConfig)}
    try:
        numbers = [int(value) for value in values.split(",")]
        if len(numbers) not in forms:
            raise ValueError(f"{len(numbers)} numbers after the head dim, not " + " or ".join(map(str, forms)))
        form = forms[len(numbers)]
        config = form(**dict(zip(form.__dataclass_fields__, numbers)))
        config.check(int(head_dim))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error} (D=" + " or D=".join(",".join(f.__dataclass_fields__) for f in forms.values()) + ")") from None
    kind = "rows" if form is RowConfig else "attention"
    return f"{kind}-{head_dim}-" + "-".join(f"{field}{getattr(config, field)}" for field in form.__dataclass_fields__), {int(head_dim): config}


def main() -> None:
    from websd.config import COMPONENTS
    from websd.schedules.matmul import TILES, VECTOR_TILES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "sd-v1-5-random.yaml")
    parser.add_argument("--component", choices=COMPONENTS, default="unet")
    parser.add_argument("--carry", type=Path, default=ROOT / "bench" / ".carry")
    parser.add_argument("--attention", type=attention_tiles, action="append", default=[],
                        metavar="D=BQ,BK,TQ,TK,DCS,TQO,BKV,THREADS|D=BQ,BK,TQ",
                        help="a variant with these attention tiles (or rows) for head dim D")
    allowed = ", ".join((*TILES, *VECTOR_TILES))
    parser.add_argument("tiles", nargs="*", metavar="TILE", help=f"one of: {allowed}")
    args = parser.parse_args()
    if not args.tiles and not args.attention:
        parser.error("name a matmul tile or an --attention config")
    for tile in args.tiles:
        if tile not in (*TILES, *VECTOR_TILES):
            parser.error(f"no matmul tile {tile!r} (allowed: {allowed})")
    for tile in args.tiles:
        build_variant(args.config, args.component, f"tile-{tile}", args.carry, tile=tile)
    for name, tiles in args.attention:
        build_variant(args.config, args.component, name, args.carry, attention_tiles=tiles)


if __name__ == "__main__":
    main()
