"""Where each model's artifacts and evidence live. Stages talk only through these files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"


def _dir(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).resolve() if value else default


def build_root() -> Path:
    return _dir("PIPELINE_BUILD_DIR", ROOT / "build")


def generated_config_dir() -> Path:
    """<build>/configs/: model configs a tool generated (never committed); looked up after configs/ and
    configs/more/ (pipeline.config.config_path), run by name like the others."""
    return build_root() / "configs"


@dataclass(frozen=True)
class ModelPaths:
    model: str

    @property
    def build(self) -> Path:  # large artifacts, git-ignored
        return build_root() / self.model

    @property
    def results(self) -> Path:  # JSON evidence
        return _dir("PIPELINE_RESULTS_DIR", ROOT / "results") / self.model

    @property
    def logs(self) -> Path:
        return _dir("PIPELINE_LOGS_DIR", ROOT / "logs") / self.model

    # export stage
    @property
    def onnx(self) -> Path:
        return self.build / "model.onnx"

    @property
    def onnx_sim(self) -> Path:
        return self.build / "model.sim.onnx"

    # om stage
    @property
    def onnx_fp16(self) -> Path:
        return self.build / "model.fp16.onnx"

    @property
    def atc_script(self) -> Path:
        return self.build / "atc.sh"

    # infer / compare stages
    @property
    def inputs(self) -> Path:  # preprocessed .npy inputs + manifest.json
        return self.build / "inputs"

    def outputs(self, backend: str) -> Path:  # raw outputs per backend
        return self.build / "outputs" / backend