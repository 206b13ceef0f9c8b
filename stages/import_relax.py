"""Stage import_relax: the exported program as a Relax IRModule, weights split off.

The module's `main` takes the component's inputs followed by its weights; the weights go
to params.npz in that order (shard_params turns them into the browser's tensor cache).
"""

from __future__ import annotations

from pathlib import Path

from stages.task import stage_task
from websd import relax_io
from websd.config import Config
from websd.paths import Layout


def import_relax(exported: Path, module_out: Path, params_out: Path) -> None:
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    program = torch.export.load(exported)
    with torch.no_grad():
        mod = from_exported_program(program, keep_params_as_input=True)
    mod, params = relax.frontend.detach_params(mod)
    weights = params["main"]
    print(f"import_relax: {exported.parent.name}: {len(weights)} weight tensors")
    relax_io.save_params([w.numpy() for w in weights], params_out)
    relax_io.save_module(mod, module_out)


def tasks(config: Config, layout: Layout):
    for component in config.components:
        yield stage_task(
            name=component,
            doc="Relax import of each exported component (weights as parameters)",
            action=(import_relax, [layout.exported(component), layout.imported(component), layout.params(component)]),
            file_dep=[layout.exported(component)],
            targets=[layout.imported(component), layout.params(component)],
            options=config.stage("import_relax"),
            tools=("apache-tvm", "apache-tvm-ffi", "torch"),
            sources=(__file__,),
        )
