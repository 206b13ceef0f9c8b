"""The websd build graph: `doit list` shows it, `doit dist` builds it.

    make_model -> export_fx -> import_relax -> legalize -> apply_db -> memory_plan -> build
                                            \\-> shard_params

One sub-task per component (and per target from apply_db on). Pick a config with
`doit config=config/<name>.yaml <task>`; each config keeps its own build/<name>/ tree
and doit state, so switching configs rebuilds nothing.
"""

import sys

from doit import get_var

from stages import apply_db, build, export_fx, import_relax, legalize, make_model, memory_plan, shard_params
from websd.config import ConfigError, load_config
from websd.paths import Layout

try:
    CONFIG = load_config(get_var("config", "config/default.yaml"))
except ConfigError as error:
    sys.exit(f"websd: bad config: {error}")  # before any task is even defined

LAYOUT = Layout(CONFIG.name)
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


def task_memory_plan():
    """static memory planning, with a report"""
    yield from memory_plan.tasks(CONFIG, LAYOUT)


def task_build():
    """a library per component and target"""
    yield from build.tasks(CONFIG, LAYOUT)


def task_shard_params():
    """weights as a sharded tensor cache"""
    yield from shard_params.tasks(CONFIG, LAYOUT)


def _component_outputs(component):
    return [f"build:{component}@{target}" for target in CONFIG.targets] + [f"shard_params:{component}"]


def task_dist():
    """everything the config asks for"""
    return {"actions": None, "task_dep": [dep for c in CONFIG.components for dep in _component_outputs(c)]}


def task_text_encoder_only():
    """only the text encoder's chain"""
    return {"actions": None, "task_dep": _component_outputs("text_encoder")}
