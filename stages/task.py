"""What every stage's doit task shares: how it decides it is up to date.

A stage reruns when its file inputs change (doit's file_dep, which includes the stage's
own source), or when its own config section or the versions of the tools it runs change
(config_changed). Nothing else: editing another stage's options leaves it alone.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from doit.tools import config_changed

import websd

WEBSD_DIR = Path(websd.__file__).parent


def versions(*packages: str) -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in packages}


def stage_task(
    *,
    doc: str,
    action: Any,
    file_dep: list[Path],
    targets: list[Path],
    options: Any,
    tools: tuple[str, ...],
    sources: tuple[str, ...] = (),
    name: str | None = None,
) -> dict:
    """A doit task dict. `sources`: files of this stage and the websd modules it runs."""
    task = {
        "doc": doc,
        "actions": [action],
        "file_dep": [str(p) for p in [*file_dep, *sources]],
        "targets": [str(p) for p in targets],
        "uptodate": [config_changed({"options": options, "versions": versions(*tools)})],
        "clean": True,
    }
    if name is not None:
        task["name"] = name
    return task
