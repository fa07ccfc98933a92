"""``python -m dagman_components.experiments ablation ...`` (or ``... experiments.ablation ...``): run the suite, write the report."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .report import write_report
from .runner import run_ablation
from .tasks import TASKS
from .variants import DEFAULT_BUDGET, DEFAULT_GROUPS, DEFAULT_REAL_DATA, QUICK_BUDGET, as_list, budget_with

__all__ = ["ablation_main", "default_work_dir"]


logger = logging.getLogger(__name__)


def ablation_main(
    seeds: int | None = None,
    quick: bool = False,
    output_dir: str = "docs/results",
    work_dir: str | None = None,
    real_data: str | None = str(DEFAULT_REAL_DATA),
    only: str | Sequence[str] | None = None,
    resume: bool = False,
    tasks: str | Sequence[str] | None = None,
    **budget_fields: Any,
) -> dict[str, Path]:
    """Run the ablation suite and write its report.

    Args:
        seeds: seeds of the core variants (default: the budget's, 3; ``--quick``: 1). The sweeps use at most
            the budget's ``sweep_seeds``.
        quick: the :py:data:`QUICK_BUDGET` and the core variants only (a smoke test under 15 minutes).
        output_dir: where ``ablation.md``, ``.csv``, ``.json`` and the plots go. Default ``docs/results``.
        work_dir: data, encoders and the per-unit JSON cache (a few hundred MB; kept out of the repository).
            Default ``$XDG_CACHE_HOME/dagman_components/ablation`` (``~/.cache/...``; ``--quick``: ``ablation_quick``).
        real_data: the real CTs (``../shared/data/real``); absent: real-data tasks are skipped, with a line
            in the report.
        only: ``core``, ``control`` (untrained encoders of SMIT and DAGMaN), ``loss``, ``pdr``, ``sa_stage`` or a
            comma-separated list. Default: :py:data:`DEFAULT_GROUPS`, all but ``control`` (``--quick``: core).
        resume: reuse results cached in ``work_dir`` under the same budget.
        tasks: a subset of the tasks (comma-separated); default all.
        budget_fields: any other :py:class:`AblationBudget` field, e.g. ``--pretrain_epochs 100 --roi_size 96
            --feature_size 48`` for a longer run on a GPU. A changed budget has its own fingerprint, so its
            results never mix with the default's in the cache.

    Raises:
        TypeError: a keyword that is not a field of :py:class:`AblationBudget`.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    budget = QUICK_BUDGET if quick else DEFAULT_BUDGET
    if seeds is not None:
        budget = replace(budget, seeds=int(seeds))
    budget = budget_with(budget, **budget_fields)
    groups = as_list(only) or (["core"] if quick else list(DEFAULT_GROUPS))
    task_list = as_list(tasks) or list(TASKS)
    output = Path(output_dir)
    work = Path(work_dir) if work_dir else default_work_dir(quick)
    command = "python -m dagman_components.experiments " + " ".join(sys.argv[1:] if sys.argv[1:] else ["ablation"])
    start = time.perf_counter()
    result = run_ablation(work, budget, groups=groups, tasks=task_list, real_data=real_data, resume=resume)
    files = write_report(result["records"], output, budget, work, real_data, command,
                         time.perf_counter() - start, skipped=result["skipped"], groups=groups)
    logger.info(f"report written to {files['markdown']}")
    return files


def default_work_dir(quick: bool = False) -> Path:
    """``$XDG_CACHE_HOME/dagman_components/ablation[_quick]`` (``~/.cache`` without XDG_CACHE_HOME)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dagman_components" / ("ablation_quick" if quick else "ablation")
