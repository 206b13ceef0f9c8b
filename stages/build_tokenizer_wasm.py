"""Stage build_tokenizer_wasm: the files the browser needs to tokenize prompts.

From a diffusers pipeline folder's `tokenizer/` it writes, into one output folder:

    tokenizer.json        the Hugging Face `tokenizers` JSON of the CLIP tokenizer
    tokenizer_meta.json   the ids the SD pipeline wraps the text with: BOS, EOS, pad, max length
    web-tokenizers.js     @mlc-ai/web-tokenizers' bundle (UMD; the wasm is inlined as a data URI)

`web/src/tokenizer.js` loads them and encodes a prompt exactly as `websd.tokenizer.token_ids`.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

from websd.atomic import atomic_path
from websd.paths import ROOT

STAGE_VERSION = 1
WEB_TOKENIZERS = ROOT / "web" / "node_modules" / "@mlc-ai" / "web-tokenizers"
BUNDLE = WEB_TOKENIZERS / "lib" / "index.js"

TOKENIZER_JSON = "tokenizer.json"
META_JSON = "tokenizer_meta.json"
BUNDLE_JS = "web-tokenizers.js"
OUTPUTS = (TOKENIZER_JSON, META_JSON, BUNDLE_JS)


def web_tokenizers_version() -> str:
    return json.loads((WEB_TOKENIZERS / "package.json").read_text())["version"]


def versions() -> dict:
    return {
        "stage": STAGE_VERSION,
        "tokenizers": importlib.metadata.version("tokenizers"),
        "transformers": importlib.metadata.version("transformers"),
        "web-tokenizers": web_tokenizers_version(),
    }


def build_tokenizer_wasm(model_dir: Path, out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_meta.json and the web-tokenizers bundle into `out_dir`."""
    from transformers import CLIPTokenizer

    if not BUNDLE.is_file():
        raise FileNotFoundError(f"{BUNDLE} is missing: run `npm ci` in {ROOT / 'web'}")
    tokenizer = CLIPTokenizer.from_pretrained(Path(model_dir) / "tokenizer")
    meta = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_length": tokenizer.model_max_length,
    }
    missing = [k for k, v in meta.items() if not isinstance(v, int)]
    if missing:
        raise ValueError(f"{model_dir}/tokenizer: no {', '.join(missing)}")
    if not 2 <= meta["max_length"] <= 4096:
        raise ValueError(f"{model_dir}/tokenizer: model_max_length {meta['max_length']} is not a CLIP length")
    with atomic_path(Path(out_dir)) as tmp:
        tmp.mkdir()
        # Padding and truncation are left off the JSON: the browser code applies them itself.
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_JSON))
        (tmp / META_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        shutil.copyfile(BUNDLE, tmp / BUNDLE_JS)


def _action(model_json: Path, out_dir: Path) -> None:
    model_dir = Path(json.loads(Path(model_json).read_text())["path"])
    build_tokenizer_wasm(model_dir, out_dir)


def task(model_json: Path, out_dir: Path) -> dict:
    import doit.tools

    out_dir = Path(out_dir)
    return {
        "actions": [(_action, [Path(model_json), out_dir])],
        "file_dep": [str(model_json), str(BUNDLE)],
        "targets": [str(out_dir / name) for name in OUTPUTS],
        "uptodate": [doit.tools.config_changed(versions())],
        "clean": True,
    }
