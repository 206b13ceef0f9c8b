"""Stage export_fx: torch.export of one component at the config's image size, once per
function of the component (websd.components.ENTRIES: the UNet at batch 2 and at batch 1)."""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd.architecture import ENTRIES
from websd.atomic import atomic_path
from websd.config import Config
from websd.paths import Layout, model_folder


def export_fx(model_json: Path, component: str, height: int, width: int, out_paths: dict[str, Path]) -> None:
    import torch

    from websd.components import example_inputs, load_component, signature

    model = model_folder(model_json)
    module = load_component(component, model)
    for entry, out_path in out_paths.items():
        inputs = example_inputs(signature(component, model, height, width, entry))
        print(f"export_fx: {component}.{entry} with inputs {[tuple(x.shape) for x in inputs]}")
        with torch.no_grad():
            program = torch.export.export(module, inputs)
        with atomic_path(out_path) as tmp:
            torch.export.save(program, tmp)


def tasks(config: Config, layout: Layout):
    for component in config.components:
        out_paths = {entry: layout.exported(component, entry) for entry in ENTRIES[component]}
        yield stage_task(
            name=component,
            doc="torch.export of each component",
            action=(export_fx, [layout.model, component, config.height, config.width, out_paths]),
            file_dep=[layout.model],
            targets=list(out_paths.values()),
            options={"stage": config.stage("export_fx"), "image": config.raw["image"], "dtype": config.raw["dtype"]},
            tools=("torch", "diffusers", "transformers"),
            sources=(__file__, WEBSD_DIR / "components.py", WEBSD_DIR / "architecture.py"),
        )
