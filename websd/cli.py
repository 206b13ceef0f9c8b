"""The `websd` command: `websd generate ...` runs a native build end to end."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import schedulers
from .atomic import atomic_path
from .config import ConfigError, load_config
from .inputs import InputError, check_guidance, check_output, check_seed, check_steps
from .paths import Layout, model_folder
from .runtime import NATIVE_TARGETS, NotBuiltError


def _progress(done: int, total: int) -> None:
    """Steps done, on one terminal line (nothing when stderr is not a terminal)."""
    if sys.stderr.isatty():
        print(f"\rstep {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from .generate import Generator, scheduler_config

    config = load_config(args.config)
    layout = Layout(config.build_key)
    if args.scheduler not in config.schedulers:
        raise InputError(f"--scheduler {args.scheduler!r}: {args.config} offers {', '.join(config.schedulers)}")
    if args.target not in config.targets:
        raise InputError(f"--target {args.target!r}: {args.config} builds {', '.join(config.targets)}")
    check_seed(args.seed)
    check_guidance(args.guidance)
    check_output(args.out)
    rebuild = f"doit config={args.config} dist"
    start = time.perf_counter()
    try:
        if not layout.model.exists():
            raise NotBuiltError(layout.model)
        most = schedulers.max_steps(args.scheduler, scheduler_config(model_folder(layout.model)))
        check_steps(args.steps, args.scheduler, most)
        generator = Generator.for_config(config, layout, args.target)
    except NotBuiltError as missing:
        print(f"websd: {missing} is not built yet: run `{rebuild}` first", file=sys.stderr)
        return 1
    load_seconds = time.perf_counter() - start
    pixels, timings = generator(
        args.prompt, args.negative_prompt, args.seed, args.steps, args.scheduler, args.guidance, on_step=_progress
    )
    with atomic_path(args.out) as tmp:  # never a half-written image
        Image.fromarray(pixels).save(tmp)
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
    gen.add_argument("--seed", type=int, default=0, help="as torch.Generator.manual_seed takes it: -2^63 to 2^64 - 1")
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--scheduler", default="dpm-solver", help="dpm-solver or pndm")
    gen.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance; at most 1 turns it off, as in diffusers")
    gen.add_argument("--target", default="llvm", choices=NATIVE_TARGETS)
    gen.add_argument("--out", type=Path, default=Path("image.png"))
    args = parser.parse_args(argv)
    try:
        return _generate(args)
    except (ConfigError, InputError) as error:
        print(f"websd: {error}", file=sys.stderr)
        return 2
