"""Stage shard_params: each component's weights as a tvmjs tensor cache.

tensor-cache.json plus params_shard_N.bin files of at most `shard_cap_mb` each, every shard
with its md5; weights are named `<component>_<i>` in `main`'s order, and the metadata's
`param_names` gives each one's PyTorch name (so weights of the same architecture can be swapped
in without a rebuild: the GPU benchmark does that). The browser fetches (and caches) exactly
this; the native runner reads the same files.
"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.config import Config
from websd.paths import Layout


def shard_params(params_in: Path, component: str, shard_cap_mb: int, encode_format: str, out_dir: Path) -> None:
    params = relax_io.load_params(params_in)
    relax_io.save_tensor_cache(component, params, out_dir, shard_cap_mb=shard_cap_mb, encode_format=encode_format)
    print(f"shard_params: {component}: {len(params)} tensors, {sum(p.nbytes for p in params.values()):,} bytes -> {out_dir}")


def tasks(config: Config, layout: Layout):
    options = config.stage("shard_params")
    for component in config.components:
        out_dir = layout.tensor_cache(component)
        yield stage_task(
            name=component,
            doc="weights as a sharded tensor cache (md5 per shard)",
            action=(shard_params, [layout.params(component), component, options["shard_cap_mb"], options["encode_format"], out_dir]),
            file_dep=[layout.params(component)],
            targets=[out_dir / "tensor-cache.json"],
            options=options,
            tools=("apache-tvm", "apache-tvm-ffi"),
            sources=(__file__, WEBSD_DIR / "relax_io.py"),
        )
