"""Relax modules and weights on disk, in the forms the stages (and the runners) hand each other."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text


def save_module(mod, path: Path) -> None:
    import tvm

    write_text(path, tvm.ir.save_json(mod))


def load_module(path: Path):
    import tvm

    return tvm.ir.load_json(Path(path).read_text())


def save_params(params: dict[str, np.ndarray], path: Path) -> None:
    """Weights by their PyTorch names, in the order the module's `main` takes them."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz"
            np.savez(f, **params)


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}  # the archive keeps the order


def save_tensor_cache(component: str, params: dict[str, np.ndarray], out_dir: Path, shard_cap_mb: int, encode_format: str) -> None:
    """tvmjs's tensor cache: weights named `<component>_<i>` in `main`'s order (`params` is
    PyTorch name -> array in that order); the metadata keeps the PyTorch names."""
    from tvm.contrib import tvmjs

    indexed = {f"{component}_{i}": p for i, p in enumerate(params.values())}
    with atomic_path(out_dir) as tmp:
        tvmjs.dump_tensor_cache(
            indexed, str(tmp), encode_format=encode_format, meta_data={"param_names": list(params)},
            shard_cap_mb=shard_cap_mb, show_progress=False,
        )


def tensor_cache_param_names(cache_dir: Path) -> list[str]:
    """The PyTorch name of each weight of a tensor cache, in `main`'s order."""
    return json.loads((Path(cache_dir) / "tensor-cache.json").read_text())["metadata"]["param_names"]


# A weight stored in column blocks (a table wider than a WebGPU binding) is named after its
# PyTorch parameter with the block's columns, "name[:, start:stop]"; a matrix stored transposed
# (one the graph only reads transposed), "name.T"; weights stored side by side along their last
# axis (projections of one input), their names joined by "|".
_COLUMN_BLOCK = re.compile(r"(?P<name>.+)\[:, (?P<start>\d+):(?P<stop>\d+)\]")
_TRANSPOSED = re.compile(r"(?P<name>.+)\.T")


def select_weights(weights: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The arrays a build takes, by its weight names (a tensor cache's `param_names`), from
    PyTorch's weights by parameter name: a column block's name selects those columns, a
    transposed matrix's the transpose, a concatenation's its parts side by side."""
    return {name: _select(weights, name) for name in names}


def _select(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if "|" in name:
        return np.concatenate([_select(weights, part) for part in name.split("|")], axis=-1)
    block, transposed = _COLUMN_BLOCK.fullmatch(name), _TRANSPOSED.fullmatch(name)
    source = (block or transposed or {"name": name})["name"]
    if source not in weights:
        raise KeyError(f"the build takes weight {name!r}, but the model has no parameter {source!r}")
    weight = weights[source]
    if block:
        return np.ascontiguousarray(weight[:, int(block["start"]) : int(block["stop"])])
    if transposed:
        return np.ascontiguousarray(weight.T)
    return weight
