"""Each kernel's design space for `doit tune`: its default schedule (websd.schedules.default) for
the build the tuning target stands in for (STANDS_IN_FOR), beside the alternatives, each
candidate labelled in its trace (an annotation of the root block) so that what won is known
from the record alone.

The alternatives: on a GPU, for a matmul or convolution, our vec4 schedule
(websd.schedules.matmul) with every tile of TUNING_TILES, where MetaSchedule's own samples lost
to it by up to 6x and were mostly invalid under WebGPU's limits (bench/results/tuning/README.md);
for any other kernel, MetaSchedule's space from its rules for the target, which its search
samples. A record labelled DEFAULT says that nothing beat the default: apply_db leaves those
kernels to the default rules of the target it builds for.
"""

from __future__ import annotations

from websd.schedules.matmul import VectorTile, gemm_of, schedule_vector_tiles
from websd.targets import is_gpu

# The build each tuning target stands in for (websd.targets.tuning_target): cuda, held to WebGPU's
# limits, for webgpu, which has no runner to tune on.
STANDS_IN_FOR = {"llvm": "llvm", "cuda": "webgpu"}
LABEL = "websd.schedule"
DEFAULT = "default"
# What a candidate of MetaSchedule's own space is called.
METASCHEDULE = "metaschedule"
# 4 or 8 rows of C a thread, 8x8 or 16x16 threads, 8 to 32 deep: 10 tiles whose staged operands
# (rows padded by a vec4) fit WebGPU's 16 KiB of workgroup memory.
WORKGROUP_MEMORY = 16_384
TUNING_TILES = {
    f"vec4 {threads * rows}x{threads * 4} k{depth}": VectorTile(rows=rows, threads=threads, depth=depth)
    for rows in (4, 8) for threads in (8, 16) for depth in (8, 16, 32)
    if 4 * depth * (threads * rows + threads * 4 + 2 * 4) <= WORKGROUP_MEMORY
}


def labelled(sch, label: str):
    """`sch`, its root block annotated with `label`."""
    from tvm.s_tir.dlight.analysis import get_root_block

    sch.annotate(get_root_block(sch), LABEL, label)
    return sch


def default_marker(mod):
    """The trace a database keeps for a kernel whose default schedule won: the label alone.
    apply_db gives such kernels the default rules of its target, and some of dlight's
    schedules do not replay from JSON (a reduction's transform_block_layout, 2026-11-28), which
    fails the whole database's loading."""
    from tvm import s_tir

    return labelled(s_tir.Schedule(mod), DEFAULT).trace


def label_of(trace) -> str:
    """The label of the candidate whose trace this is."""
    for instruction in trace.insts:
        if instruction.kind.name == "Annotate" and str(instruction.attrs[0]) == LABEL:
            return str(instruction.inputs[1])
    return METASCHEDULE


def has_tiles(func, target: str) -> bool:
    """Whether `func` gets our vec4 tiles as alternatives (a GPU's matmul or convolution)."""
    return is_gpu(target) and gemm_of(func) is not None


def our_schedules(func, target: str) -> list:
    """The default schedule of `func` for the build `target` (a websd.targets tuning target)
    stands in for, and the vec4 tiles (has_tiles) that schedule it differently, labelled."""
    import tvm_ffi

    from websd.schedules.default import default_schedule

    default = default_schedule(func, STANDS_IN_FOR[target])
    schedules = {tvm_ffi.structural_hash(default.mod): labelled(default, DEFAULT)}
    if has_tiles(func, target):
        gemm = gemm_of(func)
        for name, tile in TUNING_TILES.items():
            schedule = schedule_vector_tiles(func, gemm, tile)
            schedules.setdefault(tvm_ffi.structural_hash(schedule.mod), labelled(schedule, name))
    return list(schedules.values())


def postprocs(target: str) -> list:
    """MetaSchedule's postprocessors for `target`: those that verify on every candidate, those
    that rewrite on its own samples only. Ours are finished schedules, and its RewriteUnboundBlock
    stops the whole search (a failed check, not a rejected candidate) on dlight's reductions,
    whose epilogue sits under blockIdx outside any threadIdx."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    @derived_object
    class OnSamplesOnly(PyPostproc):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)

        def apply(self, sch) -> bool:
            return label_of(sch.trace) != METASCHEDULE or self.inner.apply(sch)

        def clone(self):
            return OnSamplesOnly(self.inner.clone())

    return [p if isinstance(p, ms.postproc.VerifyGPUCode) else OnSamplesOnly(p)
            for p in ms.postproc.Postproc.create("cuda" if is_gpu(target) else "llvm")]


def our_space(schedules: list, target: str):
    """MetaSchedule's space generator of `schedules` (a kernel's our_schedules for `target`)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.ScheduleFn(lambda sch: schedules, sch_rules=[], postprocs=postprocs(target),
                                         mutator_probs="from-target")


def metaschedule_space(target: str):
    """MetaSchedule's own space (post-order-apply of its rules for `target`)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.PostOrderApply(postprocs=postprocs(target))
