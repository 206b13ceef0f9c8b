"""Bad configs fail before any stage runs, naming the file, the key and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import doit, write_config
from websd.config import ConfigError, load_config
from websd.paths import BUILD


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"colour": "red"}, ["<top level>", "unknown key 'colour'", "allowed keys: model, image"]),
        ({"stages": {"legalize": {"fast": True}}}, ["stages.legalize", "unknown key 'fast'"]),
        ({"image": {"height": "tall"}}, ["image.height", "wrong type", "integer"]),
        ({"image": {"width": 100}}, ["image.width", "100 is not a multiple of 8"]),
        ({"targets": ["llvm", "metal"]}, ["targets.1", "'metal'", "allowed values: llvm, cuda, webgpu"]),
        ({"schedulers": ["euler"]}, ["schedulers.0", "'euler'", "allowed values: dpm-solver, pndm"]),
        ({"model": {"architecture": "/nonexistent/arch.json"}}, ["model.architecture", "/nonexistent/arch.json does not exist"]),
        ({"model": {"source": "magic"}}, ["model.source", "allowed values: random, pretrained"]),
        ({"stages": {"shard_params": {"encode_format": "int4"}}}, ["stages.shard_params.encode_format", "allowed values: raw, f32-to-bf16"]),
        ({"stages": {"tune": {"strategy": "annealing"}}}, ["stages.tune.strategy", "allowed values: evolutionary, replay-trace"]),
        ({"stages": {"tune": {"tracker": "gpu-box:9190"}}}, ["stages.tune: 'tracker' needs 'key' too"]),
        ({"stages": {"tune": {"tracker": "gpu-box", "key": "cuda"}}}, ["stages.tune.tracker: 'gpu-box' is not of the form host:port"]),
        ({"components": ["unet"]}, ["stages.tune.components: vae_decoder not among the config's components (unet)"]),
    ],
)
def test_bad_config_is_explained(tmp_path: Path, changes: dict, expected: list[str]) -> None:
    path = write_config(tmp_path / "bad.yaml", changes)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_missing_pretrained_weights_say_where_to_put_them(tmp_path: Path) -> None:
    path = tmp_path / "real.yaml"
    path.write_text(Path("config/sd-v1-5.yaml").read_text().replace("runwayml/stable-diffusion-v1-5", str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"model\.path: .*nowhere.* is neither a local folder nor in the Hugging Face cache"):
        load_config(path)


def test_doit_refuses_bad_config_before_any_stage(tmp_path: Path) -> None:
    path = write_config(tmp_path / "broken.yaml", {"image": {"height": 60}})
    executed, result = doit(f"config={path}", "dist", check=False)
    assert result.returncode != 0
    assert executed == []
    assert "image.height: 60 is not a multiple of 8" in result.stderr
    assert not list(BUILD.glob("broken*"))


def test_shipped_configs_are_valid() -> None:
    for name in ("default", "sd-v1-5-random"):
        assert load_config(f"config/{name}.yaml").name == name


def test_image_size_must_be_a_multiple_of_the_vae_scale(tmp_path: Path) -> None:
    """A VAE of 5 blocks has 16 pixels per latent: 72 would decode to another size."""
    arch = json.loads(Path("config/arch/tiny.json").read_text())
    arch["vae"]["block_out_channels"] = [32, 32, 64, 64, 64]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    path = write_config(tmp_path / "vae5.yaml", {"model": {"architecture": str(tmp_path / "arch.json")}, "image": {"height": 72}})
    with pytest.raises(ConfigError, match=r"image\.height: 72 is not a multiple of 16, the model's VAE scale factor"):
        load_config(path)
