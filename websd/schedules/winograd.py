"""Winograd's filter and input transforms (websd/passes/winograd.py): a thread per block.

Each entry of a transform, X[e, i, j] for the 16 entries e of one block (i, j), is a sum of a
few of that block's values with coefficients that depend on e. dlight's fallback schedule maps
a thread to each entry, e outermost: the 16 threads of a block sit in 16 workgroups and each
reads the block again, from L2 (SD 1.5's 1280 x 1280 filters: 0.245 ms a call, 4.65 ms a UNet
step on an H200, 670 GB/s). Here a thread computes the whole block: its values loaded once into
registers (the input's 4x4, zero outside the image; the filter's 3x3), its 16 entries unrolled
so that the coefficients fold to constants, written as 16 stores coalesced along j (the
filters' transform 1.9 ms a step, the input's 0.7: bench/results/winograd/).
"""

from __future__ import annotations

from tvm.s_tir import dlight as dl

BLOCKS = ("winograd_filter", "winograd_data")  # the transforms' blocks, as the pass names them
THREADS = 256


class WinogradTransforms(dl.ScheduleRule):
    def apply(self, func, target, tunable):
        from tvm import s_tir
        from tvm.s_tir.dlight.analysis import get_root_block

        sch = s_tir.Schedule(func)
        *producers, block = sch.get_child_blocks(get_root_block(sch))
        if sch.get(block).name_hint not in BLOCKS:
            return None
        blocks = None
        for producer in producers:  # e.g. the slice of a weight SplitWideTensors takes
            if sch.get(producer).name_hint == "winograd_blocks":
                blocks = producer
            else:
                sch.compute_inline(producer)
        entry, i, j = sch.get_loops(block)
        sch.reorder(i, j, entry)
        workgroup, thread = sch.split(sch.fuse(i, j), [None, THREADS])
        sch.bind(workgroup, "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
        sch.unroll(entry)
        if blocks is not None:  # the input's 4x4 block: loaded (zero outside the input) into registers
            sch.set_scope(blocks, 0, "local")
        else:  # the filter's 3x3 weights
            blocks = sch.cache_read(block, 0, "local")
        sch.compute_at(blocks, thread)
        for loop in sch.get_loops(blocks)[2:]:  # unrolled: constant indices keep them in registers
            sch.unroll(loop)
        return sch
