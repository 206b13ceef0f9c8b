"""Stage build_tokenizer_wasm: the files the browser needs to tokenize prompts.

From a diffusers pipeline folder's `tokenizer/` it writes, into one output folder:

    tokenizer.json        the Hugging Face `tokenizers` JSON of the CLIP tokenizer
    tokenizer_meta.json   the ids the SD pipeline wraps the text with: BOS, EOS, pad, max length
    web-tokenizers.js     @mlc-ai/web-tokenizers' bundle (UMD; the wasm is inlined as a data URI)

`web/src/tokenizer.js` loads them and encodes a prompt exactly as `websd.tokenizer.token_ids`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stages.task import stage_task
from websd.atomic import atomic_path
from websd.config import Config
from websd.paths import WEB_TOKENIZERS, Layout, model_folder

TOKENIZER_JSON = "tokenizer.json"
META_JSON = "tokenizer_meta.json"
BUNDLE_JS = "web-tokenizers.js"
OUTPUTS = (TOKENIZER_JSON, META_JSON, BUNDLE_JS)


def build_tokenizer_wasm(model_dir: Path, out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_meta.json and the web-tokenizers bundle into `out_dir`."""
    from transformers import CLIPTokenizer

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
        shutil.copyfile(WEB_TOKENIZERS, tmp / BUNDLE_JS)


def task(config: Config, layout: Layout) -> dict:
    return stage_task(
        doc="tokenizer.json + Hugging Face tokenizers compiled to wasm, for the page",
        action=(lambda: build_tokenizer_wasm(model_folder(layout.model), layout.tokenizer)),
        file_dep=[layout.model, WEB_TOKENIZERS],  # web_packages installs it
        targets=[layout.tokenizer / name for name in OUTPUTS],
        options={},
        tools=("tokenizers", "transformers"),
        sources=(__file__,),
    )
