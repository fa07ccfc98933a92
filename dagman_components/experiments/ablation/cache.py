"""Where the suite writes (:py:class:`Paths`) and the per-unit JSON cache that ``--resume`` reads."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .variants import AblationBudget, slug

__all__ = ["load_results", "Paths", "read_cached", "write_result"]


@dataclass(frozen=True)
class Paths:
    """Where the suite writes: ``work_dir`` (data, encoders, per-unit JSON) and ``real_data`` (None: absent)."""

    work_dir: Path
    real_data: Path | None

    @property
    def data(self) -> Path:
        return self.work_dir / "data"

    def unit(self, variant: str, seed: int) -> Path:
        return self.work_dir / "runs" / slug(variant) / f"seed{seed}"

    def encoder(self, variant: str, seed: int) -> Path:
        return self.unit(variant, seed) / "pretrain" / "models" / "model.pt"

    def result(self, variant: str, seed: int, task: str) -> Path:
        return self.unit(variant, seed) / f"{task}.json"


def read_cached(path: Path, budget: AblationBudget) -> dict[str, Any] | None:
    """The cached result at ``path`` if it exists, parses and was computed under ``budget``; else None."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if content.get("budget") == budget.fingerprint() else None


def write_result(path: Path, content: Mapping[str, Any]) -> None:
    """Write one unit's JSON atomically (a killed suite never leaves half a file that would pass as cached)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_results(work_dir: str | os.PathLike, budget: AblationBudget) -> list[dict[str, Any]]:
    """Every cached unit result under ``work_dir`` computed with ``budget``."""
    found = []
    for path in sorted(Path(work_dir, "runs").glob("*/seed*/*.json")):
        content = read_cached(path, budget)
        if content is not None:
            found.append(content)
    return found
