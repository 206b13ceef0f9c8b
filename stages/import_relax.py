"""Stage import_relax: the exported programs as one Relax IRModule, weights split off.

Each exported function (`main`, and the UNet's `unguided`) becomes a Relax function of that
name; each takes the component's inputs followed by its weights, the same weights in the same
order. They go to params.npz in that order, under their PyTorch names (the importer takes them
in the order of the program's `named_parameters()`; a weight stored in column blocks or
transposed is named after its parameter: relax_io.select_weights), which shard_params turns
into the browser's tensor cache.
"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.architecture import ENTRIES
from websd.config import Config
from websd.passes.concat_projections import concatenate_projections
from websd.passes.split_weights import split_wide_tables
from websd.passes.transpose_weights import transpose_read_weights
from websd.paths import Layout
from websd.targets import BINDING_LIMIT


def _torch_nearest(node, importer):
    """aten.upsample_nearest2d as PyTorch defines it: source index floor(dst * in / out).

    TVM 0.27's importer maps it to half-pixel rounding (that is "nearest-exact"), which
    picks other pixels whenever the size is not a whole multiple: the UNet's skip-sized
    upsampling of odd latent sizes.
    """
    from tvm import relax

    x = importer.env[node.args[0]]
    size, scales = node.args[1], node.args[2] if len(node.args) > 2 else None
    if size is None:
        scales = scales if isinstance(scales, list | tuple) else [scales, scales]
        size = [int(int(dim) * scale) for dim, scale in zip(importer.shape_of(x).values[2:], scales)]
    resized = relax.op.image.resize2d(
        x, size, layout="NCHW", method="nearest_neighbor", coordinate_transformation_mode="asymmetric", rounding_method="floor"
    )
    return importer.block_builder.emit(resized)


def _import(exported: Path, binding_limit: int):
    """One exported program as a Relax function and its weights by PyTorch name, in its order."""
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    program = torch.export.load(exported)
    with torch.no_grad():
        mod = from_exported_program(
            program, keep_params_as_input=True, custom_convert_map={"upsample_nearest2d.vec": _torch_nearest}
        )
    mod, params = relax.frontend.detach_params(mod)
    weights = params["main"]
    named = list(program.named_parameters())
    if [tuple(p.shape) for _, p in named] != [tuple(w.shape) for w in weights]:
        raise RuntimeError(f"{exported}: the imported weights do not follow the program's parameters")
    # Tables a WebGPU kernel could not bind whole (CLIP's token embedding) go in column blocks,
    # matrices the graph only reads transposed (Linear weights) are stored transposed, and those
    # that multiply one tensor (an attention's projections) side by side.
    function, weights = split_wide_tables(mod["main"], {name: w.numpy() for (name, _), w in zip(named, weights)}, binding_limit)
    function, weights = transpose_read_weights(function, weights)
    return concatenate_projections(function, weights, binding_limit)


def import_relax(exported: dict[str, Path], module_out: Path, params_out: Path, binding_limit: int = BINDING_LIMIT) -> None:
    """`exported`: the component's function name -> its exported program, `main` first."""
    import tvm

    functions, params = {}, None
    for entry, path in exported.items():
        function, weights = _import(path, binding_limit)
        functions[entry] = function.with_attr("global_symbol", entry)
        if params is None:
            params = weights
        elif list(weights) != list(params) or any(w.shape != params[n].shape for n, w in weights.items()):
            raise RuntimeError(f"{path}: {entry} takes other weights than {next(iter(exported))}")
    print(f"import_relax: {module_out.parent.name}: {', '.join(functions)}, {len(params)} weight tensors")
    relax_io.save_params(params, params_out)
    relax_io.save_module(tvm.IRModule(functions), module_out)


def tasks(config: Config, layout: Layout):
    for component in config.components:
        exported = {entry: layout.exported(component, entry) for entry in ENTRIES[component]}
        yield stage_task(
            name=component,
            doc="Relax import of each exported component (weights as parameters)",
            action=(import_relax, [exported, layout.imported(component), layout.params(component)]),
            file_dep=list(exported.values()),
            targets=[layout.imported(component), layout.params(component)],
            options=config.stage("import_relax"),
            tools=("apache-tvm", "apache-tvm-ffi", "torch"),
            sources=(__file__, WEBSD_DIR / "relax_io.py", WEBSD_DIR / "targets.py",
                     *(WEBSD_DIR / "passes" / f for f in ("__init__.py", "split_weights.py", "transpose_weights.py", "concat_projections.py"))),
        )
