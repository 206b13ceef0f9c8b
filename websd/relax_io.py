"""Relax modules and weight lists on disk, in the forms the stages hand each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text


def save_module(mod, path: Path) -> None:
    import tvm

    write_text(path, tvm.ir.save_json(mod))


def load_module(path: Path):
    import tvm

    return tvm.ir.load_json(Path(path).read_text())


def save_params(params: list[np.ndarray], path: Path) -> None:
    """Weights in the order the module's `main` takes them."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz"
            np.savez(f, *params)


def load_params(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]
