"""The CLIP tokenizer: built from OpenAI's BPE file, which ships inside the `clip-anytorch` wheel.

The vocabulary is CLIP's own construction: the 256 byte characters, the same with `</w>`,
one entry per merge, then the two special tokens. This reproduces
openai/clip-vit-large-patch14 (the tokenizer of SD 1.x) without a hub download.
"""

from __future__ import annotations

import gzip
import importlib.metadata
from pathlib import Path

import numpy as np
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

MAX_LENGTH = 77
BPE_PACKAGE = "clip-anytorch"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2


def bpe_file() -> Path:
    dist = importlib.metadata.distribution(BPE_PACKAGE)
    found = [f for f in dist.files or [] if f.name == BPE_FILE]
    if not found:
        raise FileNotFoundError(f"{BPE_FILE} not found in the installed {BPE_PACKAGE} package")
    return Path(dist.locate_file(found[0]))


def build_clip_tokenizer() -> CLIPTokenizer:
    lines = gzip.decompress(bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def token_ids(tokenizer: CLIPTokenizer, prompt: str) -> np.ndarray:
    """Ids for one prompt exactly as the SD pipeline makes them: padded and truncated to 77."""
    ids = tokenizer(prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    return np.asarray([ids], dtype=np.int32)
