"""bench/gpu_bench.py's report without a GPU: variants named <component>-<name>, each shown below
its own component's build, and the committed results (bench/results/, some of whose rows name
UNet variants only, as `unet_variants`) still read: merge-chromium rewrites them as they are.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest

from websd.paths import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_bench  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def test_component_of() -> None:
    assert gpu_bench.component_of("unet-tile-64x64") == "unet"
    assert gpu_bench.component_of("vae_decoder-tile-128x128") == "vae_decoder"
    assert gpu_bench.component_of("text_encoder-untuned") == "text_encoder"
    for name in ("untuned", "tile-64x64", "unet", "unet-", "vae-decoder-x"):
        with pytest.raises(ValueError, match="<component>-<name>"):
            gpu_bench.component_of(name)


def test_merge_chromium_keeps_committed_results(tmp_path: Path) -> None:
    """The chromium row merged again into a copy of committed results: nothing changes."""
    run = RESULTS / "winograd" / "0805-row-blocks"  # a run with the page's row (the newest has none)
    shutil.copy(run / "gpu-bench.json", tmp_path)
    committed = json.loads((run / "gpu-bench.json").read_text())
    (tmp_path / "chromium.json").write_text(json.dumps(committed["rows"]["chromium"]))
    gpu_bench.merge_chromium(tmp_path / "chromium.json", tmp_path)
    assert json.loads((tmp_path / "gpu-bench.json").read_text()) == committed
    assert (tmp_path / "gpu-bench.md").read_text() == (run / "gpu-bench.md").read_text()


def variant_rows(markdown: str) -> dict[str, list[str]]:
    """The variants table of a report: {build: its cells}, the header's under "build"."""
    header, _, *lines = markdown[markdown.index("Other builds of a component"):].split("\n\n")[1].splitlines()
    return {cells[0]: cells[1:] for line in [header, *lines] for cells in [line.strip("| ").split(" | ")]}


def test_old_unet_variants_render() -> None:
    """A run of 2026-11-27 (`unet_variants`, names without the component): its UNet variants as
    unet-<name>, below the UNet step; a variant built for CUDA only has no WebGPU time."""
    results = json.loads((RESULTS / "tile-sweep" / "gpu-bench.json").read_text())
    assert variant_rows(gpu_bench.markdown(results)) == {
        "build": ["our WebGPU build (Node + Dawn, Vulkan)", "our native CUDA build"],
        "unet (the build above)": ["278.0", "132.5"],
        "unet-tile-dlight-generic": ["370.5", "260.2"],
        "unet-tile-64x64": ["249.3", "124.4"],
        "unet-tile-128x128": ["349.8", "187.4"],
        "unet-tile-dlight-cuda": ["-", "128.3"],
    }
    for folder in ("k16", "k16-rolled", "split-k", "vec4"):  # every committed run renders
        assert "unet (the build above)" in gpu_bench.markdown(json.loads((RESULTS / "tile-sweep" / folder / "gpu-bench.json").read_text()))


def test_variants_of_each_component_render() -> None:
    """Variants of the UNet and the VAE decoder in one run: each below its own component's time."""
    # a committed run of UNet variants only (k8, 16 deep fully unrolled), given others
    results = copy.deepcopy(json.loads((RESULTS / "tile-sweep" / "k16-rolled" / "gpu-bench.json").read_text()))
    rows = results["rows"]
    for name in ("tvm-cuda", "webgpu-default"):
        del rows[name]["unet_variants"]
        rows[name]["variants"] = {"vae_decoder-tile-128x128": {"component": "vae_decoder", "median_ms": 100.04},
                                  "unet-tile-64x64": {"component": "unet", "median_ms": 120.0}}
    rows["tvm-cuda"]["variants"]["vae_decoder-tile-dlight-cuda"] = {"component": "vae_decoder", "median_ms": 90.0}
    markdown = gpu_bench.markdown(results)
    assert variant_rows(markdown) == {
        "build": ["our WebGPU build (Node + Dawn, Vulkan)", "our native CUDA build"],
        "unet (the build above)": ["134.6", "97.3"],
        "unet-tile-64x64": ["120.0", "120.0"],
        "vae_decoder (the build above)": ["214.9", "158.5"],
        "vae_decoder-tile-128x128": ["100.0", "100.0"],
        "vae_decoder-tile-dlight-cuda": ["-", "90.0"],
    }
    assert "our native CUDA build: 5.41 GiB (with the variants loaded after it)" in markdown
