"""web/src/randn.js must reproduce torch.randn on a seeded CPU generator (diffusers' initial latents)."""
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

RANDN_JS = Path(__file__).resolve().parents[1] / "web" / "src" / "randn.js"
SEEDS = [0, 1, 42, 2**32 + 5, 2**53 - 1]
SHAPES = [[1], [5], [15], [16], [17], [31], [1, 4, 8, 8], [1, 4, 6, 8], [1, 4, 64, 64], [2, 3, 5]]
CASES = [(s, sh) for s in SEEDS for sh in SHAPES]

# One node process for all cases: reads [[seed, shape], ...] (seeds as decimal strings so that
# values above 2**53 stay exact) from stdin, writes every result's float32 bytes back to back.
NODE_SCRIPT = """
import { randn } from %s;
let src = '';
process.stdin.on('data', (c) => (src += c));
process.stdin.on('end', () => {
  for (const [seed, shape] of JSON.parse(src)) {
    const a = randn(BigInt(seed), shape);
    process.stdout.write(Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  }
});
"""


def run_js(cases):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    script = NODE_SCRIPT % json.dumps(RANDN_JS.as_uri())
    payload = json.dumps([[str(seed), shape] for seed, shape in cases])
    res = subprocess.run([node, "--input-type=module", "-e", script], input=payload.encode(),
                         capture_output=True, check=True, timeout=60)
    flat = np.frombuffer(res.stdout, dtype="<f4")
    out, off = [], 0
    for _, shape in cases:
        n = math.prod(shape)
        out.append(flat[off:off + n].reshape(shape))
        off += n
    assert off == flat.size
    return out


@pytest.fixture(scope="module")
def js_results():
    return dict(zip(range(len(CASES)), run_js(CASES)))


@pytest.mark.parametrize("idx", range(len(CASES)), ids=[f"seed{s}-{'x'.join(map(str, sh))}" for s, sh in CASES])
def test_randn_matches_torch(js_results, idx):
    seed, shape = CASES[idx]
    ref = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()
    got = js_results[idx]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5
