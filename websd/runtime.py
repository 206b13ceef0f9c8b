"""Built components, loaded natively (llvm on the CPU, cuda on an NVIDIA GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .targets import NATIVE as NATIVE_TARGETS


class NotBuiltError(FileNotFoundError):
    """A library or tensor cache the runner needs has not been built."""


def device(target: str):
    import tvm

    if target not in NATIVE_TARGETS:
        raise ValueError(f"target {target!r} does not run natively (native targets: {', '.join(NATIVE_TARGETS)})")
    return tvm.cpu() if target == "llvm" else tvm.cuda()


class Component:
    """One compiled component with its weights on the device; call it with numpy arrays."""

    def __init__(self, name: str, library: Path, tensor_cache: Path, target: str):
        import tvm
        from tvm.contrib import tvmjs
        from tvm.runtime.vm import VirtualMachine  # relax.VirtualMachine, without the compiler

        for path in (library, tensor_cache / "tensor-cache.json"):
            if not path.exists():
                raise NotBuiltError(path)
        self.device = device(target)
        self.vm = VirtualMachine(tvm.runtime.load_module(str(library)), self.device)
        weights, _ = tvmjs.load_tensor_cache(str(tensor_cache), self.device)
        self.weights = [weights[f"{name}_{i}"] for i in range(len(weights))]

    def __call__(self, *inputs: np.ndarray, function: str = "main") -> np.ndarray:
        """One of the component's functions (websd.architecture.ENTRIES) on these inputs."""
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        out = self.vm[function](*args, *self.weights)
        return out[0].numpy()  # every function returns a 1-tuple


def release_activations() -> None:
    """Give back the device memory the VM keeps pooled after calls. Each component's static
    memory plan is a few large buffers of its own sizes, which the pool keeps for the next call
    and no other component reuses; released between the parts of a generation, at most one
    component's activations are held at a time (the weights stay)."""
    import tvm

    tvm.get_global_func("vm.builtin.memory_manager.clear")()
