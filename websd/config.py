"""The build configuration: one YAML file, validated before any stage runs.

Every error names the file, the key and what is allowed, so a typo never
surfaces as a traceback from deep inside a stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .architecture import read_vae_config, vae_scale_factor
from .paths import ROOT
from .targets import TUNABLE, TUNING_STRATEGIES

COMPONENTS = ["text_encoder", "unet", "vae_decoder"]
TARGETS = ["llvm", "cuda", "webgpu"]
SCHEDULERS = ["dpm-solver", "pndm"]
DTYPES = ["float32"]


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


_NO_OPTIONS = _object({})

SCHEMA = _object(
    {
        "model": {
            "oneOf": [
                _object(
                    {
                        "source": {"const": "random"},
                        "architecture": {"type": "string"},
                        "seed": {"type": "integer", "minimum": 0},
                    },
                    ["source", "architecture", "seed"],
                ),
                _object(
                    {
                        "source": {"const": "pretrained"},
                        "path": {"type": "string"},
                    },
                    ["source", "path"],
                ),
            ]
        },
        "image": _object(
            {
                "height": {"type": "integer", "minimum": 8, "multipleOf": 8},
                "width": {"type": "integer", "minimum": 8, "multipleOf": 8},
            },
            ["height", "width"],
        ),
        "dtype": {"enum": DTYPES},
        "components": {
            "type": "array",
            "items": {"enum": COMPONENTS},
            "minItems": 1,
            "uniqueItems": True,
        },
        "targets": {
            "type": "array",
            "items": {"enum": TARGETS},
            "minItems": 1,
            "uniqueItems": True,
        },
        "schedulers": {
            "type": "array",
            "items": {"enum": SCHEDULERS},
            "minItems": 1,
            "uniqueItems": True,
        },
        "stages": _object(
            {
                "export_fx": _NO_OPTIONS,
                "import_relax": _NO_OPTIONS,
                "legalize": _NO_OPTIONS,
                "apply_db": _object(
                    {
                        "database": {"type": "string"},
                        "default_schedules": {"type": "boolean"},
                    },
                    ["database", "default_schedules"],
                ),
                "memory_plan": _NO_OPTIONS,
                "build": _NO_OPTIONS,
                "shard_params": _object(
                    {
                        "shard_cap_mb": {"type": "integer", "minimum": 1},
                        "encode_format": {"enum": ["raw", "f32-to-bf16"]},
                    },
                    ["shard_cap_mb", "encode_format"],
                ),
                "dist": _object({"max_steps": {"type": "integer", "minimum": 1, "maximum": 1000}}, ["max_steps"]),
                "tune": {
                    **_object(
                        {
                            "components": {"type": "array", "items": {"enum": COMPONENTS}, "minItems": 1, "uniqueItems": True},
                            "target": {"enum": list(TUNABLE)},
                            "strategy": {"enum": list(TUNING_STRATEGIES)},
                            "trials": {"type": "integer", "minimum": 1},
                            "batch": {"type": "integer", "minimum": 1},
                            "kernels": {"type": "integer", "minimum": 1},
                            "minutes": {"type": "number", "exclusiveMinimum": 0},
                            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                            "tracker": {"type": "string", "pattern": r"^[^\s:]+:[0-9]+$", "description": "host:port"},
                            "key": {"type": "string", "minLength": 1},
                            "tuners": {"type": "integer", "minimum": 1},
                        },
                        ["components", "target", "strategy", "trials", "batch", "minutes", "timeout_s"],
                    ),
                    # The RPC servers are found by both: the tracker's address and their key.
                    "dependentRequired": {"tracker": ["key"], "key": ["tracker"]},
                },
            },
            ["export_fx", "import_relax", "legalize", "apply_db", "memory_plan", "build", "shard_params", "dist"],
        ),
    },
    ["model", "image", "dtype", "components", "targets", "schedulers", "stages"],
)


class ConfigError(ValueError):
    """A configuration file that cannot be built; the message says where and why."""


@dataclass(frozen=True)
class Config:
    """A validated configuration. `raw` is the YAML as written; `path` where it came from."""

    path: Path
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def shown_path(self) -> str:
        """The path a bundle's manifest names: relative to the repository for a config in it,
        so that a published bundle holds no folder of the machine that built it."""
        return str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else str(self.path)

    @property
    def build_key(self) -> str:
        """The name of this config's build tree: its file name plus a digest of its full path, so
        two configs of the same name (other folders) never share a build."""
        return f"{self.name}-{hashlib.sha256(str(self.path).encode()).hexdigest()[:8]}"

    @property
    def model(self) -> dict[str, Any]:
        return self.raw["model"]

    @property
    def height(self) -> int:
        return self.raw["image"]["height"]

    @property
    def width(self) -> int:
        return self.raw["image"]["width"]

    @property
    def components(self) -> list[str]:
        return self.raw["components"]

    @property
    def targets(self) -> list[str]:
        return self.raw["targets"]

    @property
    def schedulers(self) -> list[str]:
        return self.raw["schedulers"]

    def stage(self, name: str) -> dict[str, Any]:
        return self.raw["stages"][name]

    def resolve(self, relative: str) -> Path:
        """A path written in the config, relative to the config file's folder."""
        return (self.path.parent / relative).resolve()

    @property
    def architecture_path(self) -> Path:
        return self.resolve(self.model["architecture"])

    @property
    def database_path(self) -> Path:
        return self.resolve(self.stage("apply_db")["database"])


def _key(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _explain(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into 'key: problem (allowed: ...)'."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(schema.get("properties", {})))
        allowed = ", ".join(schema.get("properties", {}))
        return f"{_key(error)}: unknown key {', '.join(map(repr, unknown))} (allowed keys: {allowed})"
    if error.validator == "required":
        return f"{_key(error)}: {error.message}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{_key(error)}: {error.instance!r} is not allowed (allowed values: {allowed})"
    if error.validator == "multipleOf":
        return f"{_key(error)}: {error.instance} is not a multiple of {error.validator_value}"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        # Report the branch the user evidently meant (by its `source`).
        sources = [branch["properties"]["source"]["const"] for branch in error.validator_value]
        source = error.instance.get("source")
        if source not in sources:
            return f"{_key(error)}.source: {source!r} is not allowed (allowed values: {', '.join(sources)})"
        branch = error.validator_value[sources.index(source)]
        inner = next(jsonschema.Draft202012Validator(branch).iter_errors(error.instance))
        inner_path = list(error.absolute_path) + list(inner.absolute_path)
        inner.path.clear()
        inner.path.extend(inner_path)
        return _explain(inner)
    if error.validator == "pattern" and "description" in schema:
        return f"{_key(error)}: {error.instance!r} is not of the form {schema['description']}"
    if error.validator == "dependentRequired":
        given, needed = next((k, v) for k, v in error.validator_value.items() if k in error.instance and not set(v) <= set(error.instance))
        return f"{_key(error)}: {given!r} needs {', '.join(map(repr, needed))} too"
    if error.validator == "type":
        return f"{_key(error)}: {error.instance!r} has the wrong type (expected {error.validator_value})"
    return f"{_key(error)}: {error.message}"


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    errors = sorted(
        jsonschema.Draft202012Validator(SCHEMA).iter_errors(raw),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        raise ConfigError(f"{path}: " + "\n".join(_explain(e) for e in errors))
    config = Config(path=path.resolve(), raw=raw)
    _check_model(config)
    _check_tuned_components(config)
    return config


def find_pretrained(path: str) -> Path | None:
    """A diffusers pipeline folder: a local path, or a hub id already in the local hub cache."""
    if Path(path).is_dir():
        return Path(path).resolve()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):
        return None


def _check_image_size(config: Config, vae: dict) -> None:
    """The latents must cover the image exactly: a size the VAE does not divide would decode to
    another size than the one configured."""
    scale = vae_scale_factor(vae)
    for key in ("height", "width"):
        size = config.raw["image"][key]
        if size % scale:
            raise ConfigError(
                f"{config.path}: image.{key}: {size} is not a multiple of {scale}, the model's VAE scale "
                "factor (pixels per latent)"
            )


def _check_tuned_components(config: Config) -> None:
    """Tuning reads the legalized modules, which only the config's own components have."""
    unbuilt = [c for c in config.raw["stages"].get("tune", {}).get("components", []) if c not in config.components]
    if unbuilt:
        raise ConfigError(
            f"{config.path}: stages.tune.components: {', '.join(unbuilt)} not among the config's components "
            f"({', '.join(config.components)})"
        )


def _check_model(config: Config) -> None:
    if config.model["source"] == "pretrained":
        path = config.model["path"]
        folder = find_pretrained(path)
        if folder is None:
            raise ConfigError(
                f"{config.path}: model.path: {path!r} is neither a local folder nor in the Hugging Face "
                "cache. Put the diffusers pipeline folder (with model_index.json, unet/, vae/, "
                "text_encoder/, tokenizer/, scheduler/) there, or download it once with "
                f"`huggingface-cli download {path}` on a machine that reaches the hub."
            )
        vae = read_vae_config(folder)
    else:
        arch = config.architecture_path
        if not arch.is_file():
            raise ConfigError(f"{config.path}: model.architecture: {arch} does not exist")
        missing = {"unet", "text_encoder", "vae", "scheduler"} - set(json.loads(arch.read_text()))
        if missing:
            raise ConfigError(
                f"{config.path}: model.architecture: {arch} lacks the section(s) {', '.join(sorted(missing))}"
            )
        vae = json.loads(arch.read_text())["vae"]
    _check_image_size(config, vae)
    database = config.database_path
    if database.exists() and not database.is_dir():
        raise ConfigError(f"{config.path}: stages.apply_db.database: {database} is not a folder")
