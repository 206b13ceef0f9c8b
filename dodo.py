"""The websd build graph: `doit list` shows it, `doit dist` builds it.

    make_model -> export_fx -> import_relax -> legalize -> apply_db -> memory_plan -> build
                                            \\-> shard_params      ^
                                     legalize -> (doit tune) -> tuning_db/

One sub-task per component (and per target from apply_db on). Pick a config with
`doit config=config/<name>.yaml <task>`; each config keeps its own build/<name>/ tree
and doit state, so switching configs rebuilds nothing.
"""

import sys

from doit import get_var

from stages import (
    apply_db,
    build,
    build_runtime,
    build_tokenizer_wasm,
    build_wasm,
    dist,
    export_fx,
    import_relax,
    legalize,
    make_model,
    memory_plan,
    shard_params,
    tune,
    web_packages,
)
from websd.config import ConfigError, load_config
from websd.paths import DIST, Layout

try:
    CONFIG = load_config(get_var("config", "config/default.yaml"))
except ConfigError as error:
    sys.exit(f"websd: bad config: {error}")  # before any task is even defined

LAYOUT = Layout(CONFIG.build_key)
LAYOUT.root.mkdir(parents=True, exist_ok=True)

DOIT_CONFIG = {
    "dep_file": str(LAYOUT.doit_db),
    "backend": "json",
    "default_tasks": ["dist"],
    "verbosity": 2,
}


def task_make_model():
    """the diffusers pipeline folder the weights come from"""
    return make_model.task(CONFIG, LAYOUT)


def task_export_fx():
    """torch.export of each component"""
    yield from export_fx.tasks(CONFIG, LAYOUT)


def task_import_relax():
    """Relax import, weights split off as parameters"""
    yield from import_relax.tasks(CONFIG, LAYOUT)


def task_legalize():
    """LegalizeOps and fusion"""
    yield from legalize.tasks(CONFIG, LAYOUT)


def task_apply_db():
    """tuned schedules from tuning_db/, default schedules for the rest"""
    yield from apply_db.tasks(CONFIG, LAYOUT)


def task_tune():
    """MetaSchedule on the GPU for the heaviest kernels -> tuning_db/ (run on purpose)"""
    if "tune" in CONFIG.raw["stages"]:
        return tune.task(CONFIG, LAYOUT)


def task_memory_plan():
    """static memory planning, with a report"""
    yield from memory_plan.tasks(CONFIG, LAYOUT)


def task_build():
    """a library per component and target"""
    yield from build.tasks(CONFIG, LAYOUT)


def task_shard_params():
    """weights as a sharded tensor cache"""
    yield from shard_params.tasks(CONFIG, LAYOUT)


def task_build_runtime():
    """TVM's web runtime bitcode, built once per TVM version (cached outside the repository)"""
    if "webgpu" in CONFIG.targets:
        return build_runtime.task()


def task_build_wasm():
    """webgpu + wasm32 build of each component, linked with the web runtime"""
    yield from build_wasm.tasks(CONFIG, LAYOUT)


def task_web_packages():
    """the page's npm packages, as web/package-lock.json pins them"""
    if "webgpu" in CONFIG.targets:
        return web_packages.task()


def task_build_tokenizer_wasm():
    """the tokenizer for the page: tokenizer.json + tokenizers compiled to wasm"""
    if "webgpu" in CONFIG.targets:
        return build_tokenizer_wasm.task(CONFIG, LAYOUT)


def _bundle(components, doc):
    """The native libraries of these components, plus the browser bundle if the config has webgpu."""
    native = [f"build:{c}@{t}" for c in components for t in CONFIG.targets if t != "webgpu"]
    if "webgpu" not in CONFIG.targets:
        return {"doc": doc, "actions": None, "task_dep": native + [f"shard_params:{c}" for c in components]}
    return {**dist.task(CONFIG, LAYOUT, components, doc), "task_dep": native}


def task_dist():
    """everything the config asks for; the browser bundle in dist/"""
    return _bundle(CONFIG.components, task_dist.__doc__)


def task_text_encoder_only():
    """only the text encoder's chain (and a dist/ holding only it)"""
    if "text_encoder" in CONFIG.components:
        return _bundle(["text_encoder"], task_text_encoder_only.__doc__)


def task_serve():
    """serve dist/ on 127.0.0.1 (--port, default 8000)"""

    def serve(port):
        import functools
        import http.server

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(DIST))
        with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
            print(f"serving {DIST} at http://127.0.0.1:{port}/ (Ctrl-C to stop)", flush=True)
            server.serve_forever()

    return {
        "actions": [(serve,)],
        "params": [{"name": "port", "long": "port", "type": int, "default": 8000}],
        "uptodate": [False],
        "verbosity": 2,
    }
