"""Stage web_packages: the page's npm packages (tvmjs, web-tokenizers, spark-md5), exactly as
web/package-lock.json pins them, installed by `npm ci` when any is missing or another version.

install.sh runs it too; as a task, a missing install is a step the graph takes (or names, when
npm cannot run) rather than a crash while doit lists the tasks.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from doit.exceptions import TaskFailed

from websd.paths import NODE_MODULES, SPARK_MD5, TVMJS, WEB, WEB_TOKENIZERS

LOCK = WEB / "package-lock.json"
FILES = (TVMJS, WEB_TOKENIZERS, SPARK_MD5)


def installed() -> bool:
    """Every package the lock file pins is in node_modules at the pinned version."""
    for key, entry in json.loads(LOCK.read_text())["packages"].items():
        if not key.startswith("node_modules/"):
            continue
        try:
            version = json.loads((WEB / key / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return False
        if version != entry["version"]:
            return False
    return all(path.is_file() for path in FILES)


def npm_ci() -> TaskFailed | None:
    if shutil.which("npm") is None:
        return TaskFailed(f"npm not found: install Node.js and npm (apt-get install npm), then run `npm ci` in {WEB}")
    proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB, capture_output=True, text=True)
    if proc.returncode != 0:
        return TaskFailed(f"`npm ci` in {WEB} failed (it needs the npm registry):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    print(f"web_packages: installed {LOCK.name}'s packages into {NODE_MODULES}")
    return None


def task() -> dict:
    return {
        "doc": "the page's npm packages, as web/package-lock.json pins them (npm ci)",
        "actions": [npm_ci],
        "targets": [str(p) for p in FILES],
        # Only this: a file_dep on the lock file would rerun `npm ci` (which first deletes
        # node_modules) in every new build tree, though the lock file's packages are there.
        "uptodate": [installed],
    }
