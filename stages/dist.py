"""Stage dist: the static browser bundle, everything same-origin.

    index.html, src/*.js       the page (web/)
    vendor/                    tvmjs and spark-md5 from web/node_modules (pinned npm packages)
    tokenizer/                 build_tokenizer_wasm's output
    <component>.wasm           build_wasm's output
    params/<component>/        shard_params' output
    schedulers.json            every scheduler's plan for 1..max_steps steps
    manifest.json              shapes, parameter counts, defaults and the GPU limits needed

`doit dist` bundles every component; `doit text_encoder_only` only the text encoder (the
page then offers just its JS API). Both write dist/, replaced whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import schedulers
from websd.atomic import atomic_path
from websd.config import Config
from websd.paths import DIST, ROOT, Layout, model_folder

WEB = ROOT / "web"
PAGE = [WEB / "index.html", *sorted((WEB / "src").glob("*.js"))]
VENDOR = {
    "tvmjs.js": WEB / "node_modules" / "@mlc-ai" / "web-runtime" / "lib" / "index.js",
    "spark-md5.js": WEB / "node_modules" / "spark-md5" / "spark-md5.js",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_meta.json", "web-tokenizers.js")


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where possible: the weights can be gigabytes."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def manifest(config: Config, layout: Layout, components: list[str], max_steps: int) -> dict:
    from websd.components import LATENT_CHANNELS, VAE_SCALE, signature
    from websd.tokenizer import MAX_LENGTH

    model = model_folder(layout.model)
    entries, largest = {}, 0
    for component in components:
        records = json.loads((layout.tensor_cache(component) / "tensor-cache.json").read_text())["records"]
        tensors = [t for shard in records for t in shard["records"]]
        largest = max([largest, json.loads(layout.memory_report(component, "webgpu").read_text())["largest_bytes"]] + [t["nbytes"] for t in tensors])
        entries[component] = {
            "wasm": f"{component}.wasm",
            "params": f"params/{component}/",
            "num_params": len(tensors),
            **signature(component, model, config.height, config.width),
        }
    return {
        "name": config.name,
        "image": {"height": config.height, "width": config.width},
        "latent_shape": [1, LATENT_CHANNELS, config.height // VAE_SCALE, config.width // VAE_SCALE],
        "max_length": MAX_LENGTH,
        "history": schedulers.HISTORY,
        "max_steps": max_steps,
        "schedulers": config.schedulers,
        "defaults": {
            "prompt": "a photo of an astronaut riding a horse on mars",
            "negative_prompt": "",
            "steps": 20,
            "guidance": 7.5,
            "seed": 42,
            "scheduler": config.schedulers[0],
        },
        "components": entries,
        # One buffer holds the largest weight or planned activation block.
        "required_limits": {"maxStorageBufferBindingSize": largest, "maxBufferSize": largest},
    }


def scheduler_plans(config: Config, layout: Layout, max_steps: int) -> dict:
    from websd.generate import scheduler_config

    scheduler = scheduler_config(model_folder(layout.model))
    return {
        name: {str(n): [step.to_json() for step in schedulers.plan(name, scheduler, n)] for n in range(1, max_steps + 1)}
        for name in config.schedulers
    }


def dist(config: Config, layout: Layout, components: list[str], out_dir: Path) -> None:
    max_steps = config.stage("dist")["max_steps"]
    with atomic_path(out_dir) as tmp:
        (tmp / "src").mkdir(parents=True)
        shutil.copy(WEB / "index.html", tmp / "index.html")
        for source in PAGE[1:]:
            shutil.copy(source, tmp / "src" / source.name)
        (tmp / "vendor").mkdir()
        for name, source in VENDOR.items():
            shutil.copy(source, tmp / "vendor" / name)
        shutil.copytree(layout.tokenizer, tmp / "tokenizer")
        for component in components:
            shutil.copy(layout.library(component, "webgpu"), tmp / f"{component}.wasm")
            _link_tree(layout.tensor_cache(component), tmp / "params" / component)
        (tmp / "schedulers.json").write_text(json.dumps(scheduler_plans(config, layout, max_steps)))
        (tmp / "manifest.json").write_text(json.dumps(manifest(config, layout, components, max_steps), indent=1))
    print(f"dist: {out_dir} ({', '.join(components)}); serve it with `doit serve`")


def holds(components: list[str]) -> bool:
    """doit uptodate check: dist/ was last bundled with exactly these components."""
    try:
        return list(json.loads((DIST / "manifest.json").read_text())["components"]) == components
    except (OSError, ValueError, KeyError):
        return False


def task(config: Config, layout: Layout, components: list[str], doc: str) -> dict:
    file_dep = [layout.model, *PAGE, *VENDOR.values(), *(layout.tokenizer / name for name in TOKENIZER_FILES)]
    for component in components:
        file_dep += [
            layout.library(component, "webgpu"),
            layout.memory_report(component, "webgpu"),
            layout.tensor_cache(component) / "tensor-cache.json",
        ]
    spec = stage_task(
        doc=doc,
        action=(dist, [config, layout, components, DIST]),
        file_dep=file_dep,
        targets=[],  # dist/ is shared by two bundles (see holds())
        options={"dist": config.stage("dist"), "schedulers": config.schedulers, "components": components},
        tools=("diffusers",),
        sources=(__file__, WEBSD_DIR / "components.py", *(WEBSD_DIR / "schedulers").glob("*.py")),
    )
    spec["uptodate"].append(lambda: holds(components))
    return spec
