"""`websd generate` refuses bad input before any work: one line naming the option and what is
allowed, exit code 2, nothing written. Edge values it accepts mean what they mean to diffusers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import layout_of
from test_native import NEGATIVE, PROMPT, diffusers_image
from websd.config import load_config
from websd.paths import model_folder


def generate(config: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    command = ["websd", "generate", "--config", str(config), "--prompt", PROMPT, "--negative-prompt", NEGATIVE]
    return subprocess.run([*command, "--out", str(out), *options], capture_output=True, text=True)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--steps", "0"], "--steps 0: dpm-solver plans 1 to 998 steps"),
        (["--steps", "-3"], "--steps -3: dpm-solver plans 1 to 998 steps"),
        (["--steps", "100000"], "--steps 100000: dpm-solver plans 1 to 998 steps"),
        (["--steps", "1000", "--scheduler", "pndm"], "--steps 1000: pndm plans 1 to 999 steps"),
        (["--seed", str(2**64)], "--seed 18446744073709551616: must be an integer from -9223372036854775808 to 18446744073709551615"),
        (["--seed", str(-(2**63) - 1)], "must be an integer from -9223372036854775808 to 18446744073709551615"),
        (["--guidance", "nan"], "--guidance nan: must be a finite number"),
        (["--guidance", "inf"], "--guidance inf: must be a finite number"),
        (["--guidance=-inf"], "--guidance -inf: must be a finite number"),
        (["--scheduler", "euler"], "--scheduler 'euler':"),
    ],
)
def test_bad_input_is_refused_before_any_work(default_build: Path, tmp_path: Path, options: list[str], message: str) -> None:
    out = tmp_path / "new" / "image.png"
    result = generate(default_build, out, *options)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr  # one line, no traceback
    assert "unet" not in result.stdout  # no part of the pipeline ran
    assert not out.parent.exists()


def test_unwritable_output_is_refused_before_generating(default_build: Path, tmp_path: Path) -> None:
    parent_is_a_file = tmp_path / "file"
    parent_is_a_file.write_text("not a folder")
    cases = {
        Path("/sys/websd-image.png"): "cannot write in /sys",  # read-only even for root
        parent_is_a_file / "image.png": f"{parent_is_a_file} is not a folder",
        tmp_path / "image.xyz": "unknown image format '.xyz'",
        tmp_path: "is a folder",
    }
    for out, message in cases.items():
        result = generate(default_build, out)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"--out {out}: " in result.stderr and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written, no probe left


@pytest.mark.parametrize("seed", [2**64 - 1, -1, -(2**63)])
def test_extreme_seeds_mean_what_they_mean_to_diffusers(default_build: Path, tmp_path: Path, seed: int) -> None:
    """torch seeds a negative seed as seed + 2^64; diffusers draws its latents from that."""
    out = tmp_path / "deep" / "er" / "image.png"  # missing folders are made
    result = generate(default_build, out, "--seed", str(seed))
    assert result.returncode == 0, result.stderr
    config = load_config(default_build)
    expected = diffusers_image(model_folder(layout_of(default_build).model), "dpm-solver", seed, config.height, config.width)
    assert np.abs(np.asarray(Image.open(out)).astype(int) - expected).max() <= 2
    assert [p.name for p in out.parent.iterdir()] == ["image.png"]  # written atomically: no temporary left
