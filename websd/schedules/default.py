"""The default schedule of every kernel: our rules (this package), then dlight's, first match
wins. apply_db gives it to each kernel the tuning database does not schedule; `doit tune`
measures it beside the alternatives (websd/schedules/space.py)."""

from __future__ import annotations

from websd.targets import is_gpu


def default_schedule_rules(target: str, matmul_tile: str | None = None) -> list:
    """The rules for `target` (a websd.targets name), in order. `matmul_tile` gives every matmul
    and convolution one tile of websd.schedules.matmul (to measure tiles against each other)
    instead of a tile chosen per kernel."""
    from tvm.s_tir import dlight as dl

    from websd.schedules.matmul import Matmul
    from websd.schedules.reduction import GeneralReduction, Reduction
    from websd.schedules.winograd import WinogradTransforms

    if is_gpu(target):
        return [WinogradTransforms(), Matmul(matmul_tile), dl.gpu.GEMV(), Reduction(), GeneralReduction(), dl.gpu.Fallback()]
    return [dl.cpu.GEMV(), dl.cpu.Reduction()]


def default_schedule(func, target: str):
    """The schedule (an s_tir.Schedule of {"main": func}) the first rule that applies gives
    `func` for `target`; the unscheduled function where none does (as dlight leaves it)."""
    from tvm import s_tir

    from websd.targets import tvm_target

    with tvm_target(target) as device:
        for rule in default_schedule_rules(target):
            if (schedule := rule.apply(func, device, False)) is not None:
                return schedule[0] if isinstance(schedule, list) else schedule
    return s_tir.Schedule(func)
