"""Stage legalize: Relax operators lowered to TensorIR and fused, independent of the target.

The passes are `passes()`, in order: ours (websd/passes/), then TVM's generic legalization
and fusion, before any schedule is chosen.
"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.config import Config
from websd.paths import Layout
from websd.targets import BINDING_LIMIT


def passes(binding_limit: int = BINDING_LIMIT) -> list:
    from tvm import relax

    from websd.passes.attention import fuse_attention
    from websd.passes.group_norm import split_group_norm
    from websd.passes.split_k import split_k
    from websd.passes.split_wide import split_wide_tensors
    from websd.passes.winograd import winograd

    return [
        fuse_attention,  # one kernel per attention, no scores tensor (websd.attention PrimFuncs)
        split_wide_tensors(binding_limit),  # no tensor larger than a WebGPU binding (VAE at 512x512)
        split_group_norm,  # groups as an axis: GroupNorm's reductions get parallel outputs
        winograd(binding_limit),  # 3x3 convolutions as 16 batched GEMMs between elementwise transforms
        split_k,  # deep convolutions and matmuls with few output tiles: their reduction split across workgroups
        relax.transform.LegalizeOps(),  # every Relax op becomes a call_tir to a PrimFunc
        relax.transform.AnnotateTIROpPattern(),  # elementwise / broadcast / reduction / opaque
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),  # group by pattern, e.g. conv + bias + activation
        relax.transform.FuseTIR(),  # each group becomes one PrimFunc: one kernel
    ]


def legalize(module_in: Path, module_out: Path, binding_limit: int = BINDING_LIMIT) -> None:
    import tvm

    mod = tvm.transform.Sequential(passes(binding_limit))(relax_io.load_module(module_in))
    kernels = sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())
    print(f"legalize: {module_in.parent.name}: {kernels} fused kernels")
    relax_io.save_module(mod, module_out)


def tasks(config: Config, layout: Layout):
    for component in config.components:
        yield stage_task(
            name=component,
            doc="LegalizeOps + fusion of each component",
            action=(legalize, [layout.imported(component), layout.legalized(component)]),
            file_dep=[layout.imported(component)],
            targets=[layout.legalized(component)],
            options=config.stage("legalize"),
            tools=("apache-tvm", "apache-tvm-ffi"),
            sources=(__file__, *sorted((WEBSD_DIR / "passes").glob("*.py")), WEBSD_DIR / "kernels" / "attention.py", WEBSD_DIR / "targets.py"),
        )
