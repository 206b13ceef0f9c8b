"""The CLIP tokenizer: Python ids as the SD pipeline makes them, and the browser code
(web/src/tokenizer.js, run under Node) giving the very same ids."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stages import build_tokenizer_wasm as stage
from websd.paths import ROOT
from websd.tokenizer import MAX_LENGTH, build_clip_tokenizer, token_ids

BOS, EOS = 49406, 49407
ASTRONAUT = "a photo of an astronaut riding a horse on mars"
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]

LONG = (
    "a breathtaking ultra detailed matte painting of an ancient floating city above the clouds at "
    "golden hour, intricate gothic towers, waterfalls pouring into the sky, flocks of white birds, "
    "volumetric light, god rays, cinematic composition, by greg rutkowski and alphonse mucha and "
    "james gurney, trending on artstation, octane render, unreal engine 5, 8k resolution, sharp "
    "focus, highly detailed, concept art, dramatic lighting, vivid colors, masterpiece, best quality"
)

PROMPTS = [
    ASTRONAUT,
    "",
    " ",
    "     ",
    "\t\n\r\n",
    "  leading and trailing spaces  ",
    "multiple    spaces\t\ttabs\n\nnewlines\r\ncrlf",
    "A Photo Of An ASTRONAUT",
    "HeLLo WoRLD, mIxEd CaSiNg",
    "don't stop, it's fine, we're here, they've gone, I'm ok, you'll see, he'd go",
    "DON'T IT'S WE'RE I'M YOU'LL",
    "it’s a curly apostrophe ‘quoted’ “double”",
    "rock 'n' roll ''double'' '",
    "café crème brûlée à la française, naïve façade, Ångström, jalapeño",
    "cafe\u0301 (decomposed accent) vs café",
    "Straße STRASSE ß",
    "İstanbul ΟΔΟΣ Σίσυφος",
    "富士山の風景、桜の花、浮世絵スタイル",
    "一只在月球上骑马的宇航员",
    "서울의 야경, 네온 불빛",
    "Москва зимой, красная площадь, снег",
    "Ελληνικό νησί με λευκά σπίτια",
    "مدينة عربية قديمة في الصحراء",
    "עיר עתיקה בירושלים",
    "हिमालय के पहाड़",
    "ตลาดน้ำในกรุงเทพ",
    "🐱 cat and 🐶 dog",
    "👨‍👩‍👧‍👦 family emoji with zwj, 👍🏽 skin tone, 🇯🇵 flag",
    "🔥🔥🔥",
    "!!!???...",
    "a,b;c:d|e/f\\g",
    "(masterpiece:1.2), [best quality], {highly detailed}, <lora:foo:0.8>",
    "<b>bold</b> &amp; <i>italic</i>",
    "https://example.com/path?query=1&x=y#frag",
    "#hashtag @user $100 50% ^caret ~tilde `backtick` *star* _under_ +plus =eq",
    "x^2 + y^2 = z^2, ∑ ∫ √ ∞ ≈ ≠ ± × ÷",
    "«guillemets» — em dash – en dash … ellipsis",
    "1234567890",
    "3.14159 1,000,000 0.5 -42 1e10 007",
    "2023-12-31 23:59:59",
    "ＡＢＣ１２３ full-width letters",
    "zero\u200bwidth\u200dspace and\u00a0nbsp and\u2028line sep",
    "<|endoftext|>",
    "<|startoftext|> a cat <|endoftext|> a dog",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a " * 74,
    "a " * 75,
    "a " * 76,
    "a " * 80,
    LONG,
    LONG + " " + LONG,
    "日本語 " * 60,
    "🐱" * 100,
    "new\nline in the middle",
    "tab\tseparated\tvalues",
    "emoji🙂glued🙃to✨words",
    "camelCaseWords and snake_case_words and kebab-case-words",
    "O'Reilly's 'quoted' l'été",
]

# Runs web/src/tokenizer.js under Node: loads the folder once over HTTP (the browser's path,
# through fetch) and once from a file: URL, encodes every prompt read from stdin with each.
NODE_DRIVER = r"""
import http from "node:http";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modulePath, dir] = process.argv.slice(1);
const { loadTokenizer } = await import(pathToFileURL(modulePath).href);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const prompts = JSON.parse(input);

const server = http.createServer(async (req, res) => {
  try {
    const body = await readFile(join(dir, decodeURIComponent(new URL(req.url, "http://x").pathname)));
    res.writeHead(200).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const overHttp = await loadTokenizer(`http://127.0.0.1:${server.address().port}/`);
server.close();
const fromFile = await loadTokenizer(pathToFileURL(dir).href);

const encodeAll = (tok) => prompts.map((p) => Array.from(tok.encode(p)));
process.stdout.write(JSON.stringify({ http: encodeAll(overHttp), file: encodeAll(fromFile) }));
overHttp.dispose();
fromFile.dispose();
"""


@pytest.fixture(scope="module")
def reference():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def web_folder(tmp_path_factory, reference) -> Path:
    """The stage's output for a fake pipeline folder."""
    tmp = tmp_path_factory.mktemp("tokenizer")
    reference.save_pretrained(tmp / "pipeline" / "tokenizer")
    out = tmp / "web"
    stage.build_tokenizer_wasm(tmp / "pipeline", out)
    return out


def test_python_ids_astronaut(reference):
    ids = token_ids(reference, ASTRONAUT)
    assert ids.shape == (1, MAX_LENGTH)
    assert ids[0].tolist() == ASTRONAUT_IDS + [EOS] * (MAX_LENGTH - len(ASTRONAUT_IDS))


def test_python_ids_truncate_like_diffusers(reference):
    ids = token_ids(reference, LONG + " " + LONG)[0].tolist()
    assert len(ids) == MAX_LENGTH and ids[0] == BOS and ids[-1] == EOS
    assert ids[1:-1] == reference(LONG + " " + LONG, add_special_tokens=False).input_ids[: MAX_LENGTH - 2]


def test_stage_outputs(web_folder, reference):
    assert sorted(p.name for p in web_folder.iterdir()) == sorted(stage.OUTPUTS)
    meta = json.loads((web_folder / stage.META_JSON).read_text())
    assert meta == {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS, "max_length": MAX_LENGTH}
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(web_folder / stage.TOKENIZER_JSON))
    assert saved.encode(ASTRONAUT).ids == ASTRONAUT_IDS
    # The pipeline folder's tokenizer is the reference one.
    from transformers import CLIPTokenizer

    loaded = CLIPTokenizer.from_pretrained(web_folder.parent / "pipeline" / "tokenizer")
    assert all((token_ids(loaded, p) == token_ids(reference, p)).all() for p in PROMPTS)


def test_browser_tokenizer_matches_python(web_folder, reference):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    assert len(PROMPTS) >= 50
    # The prompts really cover truncation: some are longer than 77 tokens, one is exactly 75.
    lengths = [len(reference(p, add_special_tokens=False).input_ids) for p in PROMPTS]
    assert max(lengths) > MAX_LENGTH and MAX_LENGTH - 2 in lengths and 0 in lengths

    result = subprocess.run(
        [node, "--input-type=module", "-e", NODE_DRIVER, str(ROOT / "web/src/tokenizer.js"), str(web_folder)],
        input=json.dumps(PROMPTS),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = [token_ids(reference, p)[0].tolist() for p in PROMPTS]
    for how in ("http", "file"):
        assert len(got[how]) == len(PROMPTS)
        mismatches = [(p, e, g) for p, e, g in zip(PROMPTS, expected, got[how]) if e != g]
        assert not mismatches, f"{how}: {len(mismatches)} prompts differ, first: {mismatches[0]}"
