"""Stage dist: the static browser bundle, everything same-origin.

    index.html, src/*.js       the page (web/)
    vendor/                    tvmjs and spark-md5 from web/node_modules (pinned npm packages)
    tokenizer/                 build_tokenizer_wasm's output
    <component>.wasm           build_wasm's output
    params/<component>/        shard_params' output
    schedulers.json            every scheduler's plan for 1..max_steps steps
    manifest.json              shapes, parameter counts, defaults and the WebGPU limits the
                               build needs (the page requests those above WebGPU's defaults)

`doit dist` bundles every component; `doit text_encoder_only` only the text encoder (the
page then offers just its JS API). Both write dist/, replaced whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import schedulers
from websd.atomic import atomic_path
from websd.config import Config
from websd.paths import DIST, SPARK_MD5, TVMJS, WEB, Layout, model_folder

PAGE = [WEB / "index.html", *sorted((WEB / "src").glob("*.js"))]
VENDOR = {"tvmjs.js": TVMJS, "spark-md5.js": SPARK_MD5}  # web_packages installs them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_meta.json", "web-tokenizers.js")


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where possible: the weights can be gigabytes."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def manifest(config: Config, layout: Layout, components: list[str], max_steps: dict[str, int], build: dict) -> dict:
    from websd.architecture import ENTRIES, latent_shape, read_vae_config
    from websd.components import signature
    from websd.tokenizer import MAX_LENGTH

    model = model_folder(layout.model)
    entries, needs = {}, []
    for component in components:
        records = json.loads((layout.tensor_cache(component) / "tensor-cache.json").read_text())["records"]
        tensors = [t for shard in records for t in shard["records"]]
        memory = json.loads(layout.memory_report(component, "webgpu").read_text())
        needs.append(required_limits(
            json.loads(layout.wasm_stats(component).read_text())["limits"], memory["largest_bytes"], max(t["nbytes"] for t in tensors)
        ))
        entries[component] = {
            "wasm": f"{component}.wasm",
            "params": f"params/{component}/",
            "num_params": len(tensors),
            "weight_bytes": sum(t["nbytes"] for t in tensors),
            # What a call allocates beside the weights (the static memory plan), per function.
            "activation_bytes": {name: f["after_bytes"] for name, f in memory["functions"].items()},
            "functions": {entry: signature(component, model, config.height, config.width, entry) for entry in ENTRIES[component]},
        }
    return {
        "name": config.name,
        "build": build,
        "image": {"height": config.height, "width": config.width},
        "latent_shape": latent_shape(read_vae_config(model), config.height, config.width),
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
        "required_limits": {name: max(need[name] for need in needs) for name in needs[0]},
    }


def required_limits(kernel_limits: dict[str, int], largest_activation: int, largest_weight: int) -> dict[str, int]:
    """What a component needs of a WebGPU device: its kernels' limits (build_wasm read them off
    the WGSL), and buffers as large as its largest planned activation block or weight (each is
    one buffer, bound whole)."""
    largest = max(largest_activation, largest_weight)
    return {"maxStorageBufferBindingSize": largest, "maxBufferSize": largest, **kernel_limits}


def scheduler_plans(config: Config, layout: Layout) -> dict:
    """Each scheduler's plan for every number of steps the page offers: 1 to the config's
    dist.max_steps, or fewer where the scheduler cannot plan that many."""
    from websd.generate import scheduler_config

    scheduler = scheduler_config(model_folder(layout.model))
    most = config.stage("dist")["max_steps"]
    return {
        name: {str(n): [step.to_json() for step in schedulers.plan(name, scheduler, n)] for n in range(1, min(most, schedulers.max_steps(name, scheduler)) + 1)}
        for name in config.schedulers
    }


def fingerprint(config: Config, components: list[str], inputs: list[str]) -> str:
    """What a bundle is made of: the config, the components and the bytes of every input file.
    dist/ is one folder shared by every config and bundle, so doit's own record of this
    task's inputs cannot tell whether dist/ still holds this bundle; this can."""
    digest = hashlib.sha256(json.dumps([str(config.path), config.raw, components]).encode())
    for path in inputs:
        digest.update(path.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def dist(config: Config, layout: Layout, components: list[str], inputs: list[str], out_dir: Path) -> None:
    plans = scheduler_plans(config, layout)
    max_steps = {name: len(by_steps) for name, by_steps in plans.items()}
    build = {"config": config.shown_path, "fingerprint": fingerprint(config, components, inputs)}
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
        (tmp / "schedulers.json").write_text(json.dumps(plans))
        (tmp / "manifest.json").write_text(json.dumps(manifest(config, layout, components, max_steps, build), indent=1))
    print(f"dist: {out_dir} ({', '.join(components)}); serve it with `doit serve`")


def holds(config: Config, components: list[str], inputs: list[str]) -> bool:
    """doit uptodate check: dist/ holds the bundle these inputs make."""
    try:
        built = json.loads((DIST / "manifest.json").read_text())["build"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return built == fingerprint(config, components, inputs)


def task(config: Config, layout: Layout, components: list[str], doc: str) -> dict:
    file_dep = [layout.model, *PAGE, *VENDOR.values(), *(layout.tokenizer / name for name in TOKENIZER_FILES)]
    for component in components:
        file_dep += [
            layout.library(component, "webgpu"),
            layout.wasm_stats(component),
            layout.memory_report(component, "webgpu"),
            layout.tensor_cache(component) / "tensor-cache.json",
        ]
    sources = (__file__, WEBSD_DIR / "components.py", WEBSD_DIR / "architecture.py", *(WEBSD_DIR / "schedulers").glob("*.py"))
    inputs = [str(p) for p in [*file_dep, *sources]]
    spec = stage_task(
        doc=doc,
        action=(dist, [config, layout, components, inputs, DIST]),
        file_dep=file_dep,
        targets=[],  # dist/ is shared by every config and bundle (see holds())
        options={"dist": config.stage("dist"), "schedulers": config.schedulers, "components": components},
        tools=("diffusers",),
        sources=sources,
    )
    spec["uptodate"].append(lambda: holds(config, components, inputs))
    return spec
