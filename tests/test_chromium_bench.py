"""bench/chromium_bench.py, the GPU benchmark's driver of the page in headless Chromium, end to end
here (SwiftShader) on the default bundle packed as for the GPU machine (no weight shards): it
makes the weights, loads the page in a fresh profile and again from the Cache API, generates
through the form, and brings back timings and an image that matches diffusers'. Slow: each load
compiles every shader on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from browser import CHROMIUM
from conftest import DEFAULT_CONFIG, layout_of
from test_native import diffusers_image
from websd.config import load_config
from websd.paths import ROOT, model_folder


def test_drives_the_page_and_reports(default_build: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "dist"  # as pack_gpu.sh bundle packs it: the weights are made by the driver
    shutil.copytree(os.environ["WEBSD_DIST"], bundle, ignore=shutil.ignore_patterns("params_shard_*.bin"))
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "bench" / "chromium_bench.py"), "--config", str(DEFAULT_CONFIG), "--chromium", str(CHROMIUM),
               "--adapter", "swiftshader", "--bundle", str(bundle), "--work", str(tmp_path / "work"), "--out", str(out),
               "--generations", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((out / "chromium.json").read_text())
    print(f"\nSwiftShader: first load {report['first_load_s']} s, reload {report['reload_s']} s, generation {report['generation_ms']} ms")

    assert report["errors"] == {}
    assert report["adapter"]["architecture"] == "swiftshader"
    assert report["first_load_s"] > 0 and report["reload_s"] > 0 and report["generation_ms"] > 0
    shards = sum(len(json.loads(f.read_text())["records"]) for f in bundle.glob("params/*/tensor-cache.json"))
    assert report["first_load_shard_requests"] == shards > 0
    assert report["reload_shard_requests"] == 0  # the weights came from the Cache API
    steps = report["first_load_weight_steps"]  # where the first load's download went, shard by shard
    assert {steps[f"{step}_shards"] for step in ("fetch", "md5", "cache")} == {shards}
    assert all(steps[f"{step}_ms"] >= 0 for step in ("fetch", "md5", "cache"))
    assert report["reload_weight_steps"] == {}
    assert set(report["first_load_components"]) == {"text_encoder", "unet", "vae_decoder"}
    assert report["generations"][0]["steps"] == [20, 20]
    assert "max_pixel_diff_vs_pytorch_fp32" not in report  # no PyTorch fp32 image without CUDA

    config = load_config(DEFAULT_CONFIG)
    form = report["form"]
    expected = diffusers_image(model_folder(layout_of(DEFAULT_CONFIG).model), form["scheduler"], int(form["seed"]), config.height,
                               config.width, float(form["guidance"]), int(form["steps"]), form["prompt"], form["negative-prompt"])
    image = np.asarray(Image.open(out / "chromium.png"))
    assert image.shape == expected.shape and expected.std() > 10  # a real image
    assert np.abs(image.astype(int) - expected).max() <= 3  # the page's tolerance (test_browser)
