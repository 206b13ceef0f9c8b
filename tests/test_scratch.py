"""The suite builds into one scratch folder and removes it when it ends (conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from websd.paths import ROOT


def test_a_test_run_leaves_no_scratch_folder(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("WEBSD_KEEP_TEST_BUILDS", None)
    quick = ["-n", "0", "tests/test_schedulers.py::test_unknown_scheduler_is_named"]  # one process: one folder
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *quick], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(temp.glob("websd-tests-*"))
    kept = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *quick], cwd=ROOT,
                          env={**env, "WEBSD_KEEP_TEST_BUILDS": "1"}, capture_output=True, text=True)
    assert kept.returncode == 0 and len(list(temp.glob("websd-tests-*"))) == 1  # kept on request
