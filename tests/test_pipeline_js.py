"""web/src/pipeline.js's submit schedule: a call's first dispatches are submitted after 8, then
16, 32 and every 64 more, and a flush from elsewhere (a sync ends a call) starts it over."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

PIPELINE_JS = Path(__file__).resolve().parents[1] / "web" / "src" / "pipeline.js"

# A stand-in for tvmjs's WebGPU context: it counts encoded dispatches the way tvmjs does
# (shaderSubmitCounter += 1 after each) and records at which count each submit happened.
NODE_SCRIPT = """
import { submitAsEncoded } from %s;
const submits = [];
const context = { shaderSubmitCounter: 0, encoded: 0, flushCommands() { submits.push(this.encoded); } };
submitAsEncoded(context);
const encode = (n) => { for (let i = 0; i < n; i++) { context.encoded += 1; context.shaderSubmitCounter += 1; } };
encode(200);
context.flushCommands();  // the call's sync
encode(20);
process.stdout.write(JSON.stringify({ submits, counter: context.shaderSubmitCounter }));
"""


def test_first_dispatches_are_submitted_sooner() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    result = subprocess.run([node, "--input-type=module", "-e", NODE_SCRIPT % json.dumps(PIPELINE_JS.as_uri())],
                            capture_output=True, text=True, check=True, timeout=60)
    out = json.loads(result.stdout)
    assert out["submits"] == [8, 8 + 16, 8 + 16 + 32, 120, 184, 200, 208]
    assert out["counter"] == 220  # tvmjs's own count goes on untouched
