"""Stage memory_plan: static memory planning, with a report of what it saved.

Dataflow is lowered to explicit allocations, then StaticPlanBlockMemory reuses storage
between tensors whose lifetimes do not overlap. memory.json gives, per Relax function,
the bytes allocated before and after planning, and the largest single allocation (which
bounds the GPU buffer size the browser must allow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from stages.task import stage_task
from websd import relax_io
from websd.atomic import write_text
from websd.config import Config
from websd.paths import Layout


def passes() -> list:
    from tvm import relax

    return [
        relax.transform.RewriteDataflowReshape(),  # reshapes become views ...
        relax.transform.DeadCodeElimination(),  # ... and their kernels go: no shader to compile for them
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),  # call_tir -> explicit alloc_tensor + call
        relax.transform.StaticPlanBlockMemory(),
    ]


def allocations(func) -> list[int]:
    """Byte sizes of what the function allocates: tensors not yet planned, and planned storage."""
    from tvm import relax
    from tvm.runtime import DataType

    sizes = []

    def visit(expr):
        if not (isinstance(expr, relax.Call) and hasattr(expr.op, "name")):
            return
        if expr.op.name == "relax.builtin.alloc_tensor":
            shape, dtype = expr.args[0], expr.args[1]
            sizes.append(math.prod(int(d) for d in shape.values) * DataType(dtype.value).bits // 8)
        elif expr.op.name == "relax.memory.alloc_storage":
            sizes.append(math.prod(int(d) for d in expr.args[0].values))

    relax.analysis.post_order_visit(func.body, visit)
    return sizes


def memory_plan(module_in: Path, module_out: Path, report_out: Path) -> None:
    import tvm
    from tvm import relax

    mod = relax_io.load_module(module_in)
    *lowering, plan = passes()
    lowered = tvm.transform.Sequential(lowering)(mod)
    planned = plan(lowered)
    functions = {}
    for gv, func in lowered.functions.items():
        if isinstance(func, relax.Function):
            before, after = allocations(func), allocations(planned[gv.name_hint])
            functions[gv.name_hint] = {"before_bytes": sum(before), "after_bytes": sum(after), "largest_bytes": max(after, default=0)}
    report = {
        "before_bytes": sum(f["before_bytes"] for f in functions.values()),
        "after_bytes": sum(f["after_bytes"] for f in functions.values()),
        "largest_bytes": max((f["largest_bytes"] for f in functions.values()), default=0),
        "functions": functions,
    }
    print(f"memory_plan: {module_in.parent.parent.name}@{module_in.parent.name}: {report['before_bytes']:,} -> {report['after_bytes']:,} bytes")
    relax_io.save_module(planned, module_out)
    write_text(report_out, json.dumps(report, indent=1))


def tasks(config: Config, layout: Layout):
    for component in config.components:
        for target in config.targets:
            outputs = [layout.planned(component, target), layout.memory_report(component, target)]
            yield stage_task(
                name=f"{component}@{target}",
                doc="static memory planning (memory.json: bytes before/after, per function)",
                action=(memory_plan, [layout.scheduled(component, target), *outputs]),
                file_dep=[layout.scheduled(component, target)],
                targets=outputs,
                options=config.stage("memory_plan"),
                tools=("apache-tvm", "apache-tvm-ffi"),
                sources=(__file__,),
            )
