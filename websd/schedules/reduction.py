"""Reductions (GroupNorm's statistics and normalization, means, variances, layer norms,
softmaxes) with as many threads per workgroup on webgpu as WebGPU's default limits allow.

dlight's reduction rules size a workgroup by the target's kind: its Reduction rule
(suggest_threads_per_block) 1024 threads on cuda, 256 on metal, rocm and opencl; its
GeneralReduction rule 256 on cuda and opencl; both 64 on any other kind, webgpu included. SD's
GroupNorm kernels, whose only parallel axis is the 32 groups, then reduce and normalize each
group's million values (VAE decoder at 512x512) with 32 workgroups of 64 threads: 131 ms of the
WebGPU VAE decode against 12 natively on an H200 (bench/results/tile-sweep/k16/
profile-vae_decoder.md; 32 ms with these rules, bench/results/profile-vae_decoder.md). These
rules ask dlight's as for a 256-thread GPU.
"""

from __future__ import annotations

from tvm.s_tir import dlight as dl


def _sized_for_256_threads():
    """A GPU target both dlight rules give 256 threads a workgroup (WebGPU's default limit). They
    read only its kind; the kernel is still compiled for webgpu."""
    import tvm

    return tvm.target.Target("opencl")


class _WebGPUAt256Threads:
    """On webgpu, the dlight rule it precedes is asked as for a 256-thread target."""

    def apply(self, func, target, tunable):
        return super().apply(func, _sized_for_256_threads() if target.kind.name == "webgpu" else target, tunable)


class Reduction(_WebGPUAt256Threads, dl.gpu.Reduction):
    """dlight's Reduction rule, with up to 256 threads a workgroup on webgpu."""


class GeneralReduction(_WebGPUAt256Threads, dl.gpu.GeneralReduction):
    """dlight's GeneralReduction rule, with 256 threads a workgroup on webgpu."""
