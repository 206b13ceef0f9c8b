"""The `websd` command: `websd generate ...` runs a native build end to end."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config
from .paths import Layout
from .runtime import NATIVE_TARGETS, NotBuiltError


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from .generate import Generator

    config = load_config(args.config)
    rebuild = f"doit config={args.config} dist"
    if args.scheduler not in config.schedulers:
        raise ConfigError(f"--scheduler {args.scheduler!r}: {args.config} offers {', '.join(config.schedulers)}")
    if args.target not in config.targets:
        raise ConfigError(f"--target {args.target!r}: {args.config} builds {', '.join(config.targets)}")
    start = time.perf_counter()
    try:
        generator = Generator.for_config(config, Layout(config.name), args.target)
    except NotBuiltError as missing:
        print(f"websd: {missing} is not built yet: run `{rebuild}` first", file=sys.stderr)
        return 1
    load_seconds = time.perf_counter() - start
    pixels, timings = generator(args.prompt, args.negative_prompt, args.seed, args.steps, args.scheduler, args.guidance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(args.out)
    print(f"load        {load_seconds:8.3f} s")
    for part, seconds in timings.seconds.items():
        print(f"{part:<12}{seconds:8.3f} s" + (f"  ({seconds / args.steps * 1000:.1f} ms/step)" if part == "unet" else ""))
    print(f"total       {time.perf_counter() - start:8.3f} s  -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="websd", description="Stable Diffusion compiled with TVM")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="text to image with a native build")
    gen.add_argument("--config", default="config/default.yaml", help="the config the build was made from")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--scheduler", default="dpm-solver", help="dpm-solver or pndm")
    gen.add_argument("--guidance", type=float, default=7.5)
    gen.add_argument("--target", default="llvm", choices=NATIVE_TARGETS)
    gen.add_argument("--out", type=Path, default=Path("image.png"))
    args = parser.parse_args(argv)
    try:
        return _generate(args)
    except ConfigError as error:
        print(f"websd: {error}", file=sys.stderr)
        return 2
