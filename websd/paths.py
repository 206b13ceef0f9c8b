"""Where every stage reads and writes: the one place that knows the build tree's layout.

Each config builds into its own tree, build/<config>/, named by Config.build_key.

    build/<config>/model.json                         make_model
    build/<config>/<component>/<function>.pt2         export_fx (one per function: main, ...)
    build/<config>/<component>/imported.json, .npz    import_relax
    build/<config>/<component>/legalized.json         legalize
    build/<config>/<component>/<target>/scheduled.json    apply_db
    build/<config>/<component>/<target>/planned.json      memory_plan (+ memory.json)
    build/<config>/<target>/<component>.so            build (llvm, cuda)
    build/<config>/webgpu/<component>.wasm, .json     build_wasm (+ kernel count, WGSL size)
    build/<config>/params/<component>/tensor-cache.json   shard_params
    build/<config>/tokenizer/                         build_tokenizer_wasm
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Overridable so tests can build into a scratch folder.
BUILD = Path(os.environ.get("WEBSD_BUILD", ROOT / "build"))
DIST = Path(os.environ.get("WEBSD_DIST", ROOT / "dist"))


# The page's npm packages, pinned by web/package-lock.json (the web_packages task installs them).
WEB = ROOT / "web"
NODE_MODULES = WEB / "node_modules"
TVMJS = NODE_MODULES / "@mlc-ai" / "web-runtime" / "lib" / "index.js"
WEB_TOKENIZERS = NODE_MODULES / "@mlc-ai" / "web-tokenizers" / "lib" / "index.js"
SPARK_MD5 = NODE_MODULES / "spark-md5" / "spark-md5.js"

# A MetaSchedule JSON database: the files of one tuning_db/<target>/ folder.
TUNING_DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def tuning_database(folder: Path) -> list[Path]:
    """The database files in `folder`, or [] if it holds no complete database."""
    files = [Path(folder) / name for name in TUNING_DATABASE_FILES]
    return files if all(f.is_file() for f in files) else []


def model_folder(model_json: Path) -> Path:
    """The diffusers pipeline folder that make_model's model.json names."""
    return Path(json.loads(Path(model_json).read_text())["path"])


def library_suffix(target: str) -> str:
    return ".wasm" if target == "webgpu" else ".so"


@dataclass(frozen=True)
class Layout:
    """The build tree of one config (`key`: its Config.build_key)."""

    key: str

    @property
    def root(self) -> Path:
        return BUILD / self.key

    @property
    def doit_db(self) -> Path:
        return self.root / "doit.db"

    @property
    def model(self) -> Path:
        """JSON naming the diffusers pipeline folder the stages read weights from."""
        return self.root / "model.json"

    @property
    def random_model_dir(self) -> Path:
        return self.root / "model"

    def component_dir(self, component: str) -> Path:
        return self.root / component

    def exported(self, component: str, entry: str) -> Path:
        return self.component_dir(component) / f"{entry}.pt2"

    def imported(self, component: str) -> Path:
        return self.component_dir(component) / "imported.json"

    def params(self, component: str) -> Path:
        return self.component_dir(component) / "params.npz"

    def legalized(self, component: str) -> Path:
        return self.component_dir(component) / "legalized.json"

    def scheduled(self, component: str, target: str) -> Path:
        return self.component_dir(component) / target / "scheduled.json"

    def planned(self, component: str, target: str) -> Path:
        return self.component_dir(component) / target / "planned.json"

    def memory_report(self, component: str, target: str) -> Path:
        return self.component_dir(component) / target / "memory.json"

    def library(self, component: str, target: str) -> Path:
        return self.root / target / f"{component}{library_suffix(target)}"

    def tuning_log(self, target: str) -> Path:
        """`doit tune`'s outcome per kernel (JSON lines, appended run after run)."""
        return self.root / f"tune-{target}.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def wasm_stats(self, component: str) -> Path:
        return self.root / "webgpu" / f"{component}.json"

    def tensor_cache(self, component: str) -> Path:
        return self.root / "params" / component
