"""The suite: which (variant, seed) units and tasks run, in order, each result cached as it completes."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import Paths, read_cached, write_result
from .pretraining import encoder_drift, pretrain, pretraining_datalist
from .tasks import REAL_TASKS, TASK_FUNCTIONS, TASKS
from .variants import (
    BUNDLES_DIR,
    DEFAULT_BUDGET,
    DEFAULT_GROUPS,
    DEFAULT_REAL_DATA,
    FULL_GROUPS,
    GROUPS,
    AblationBudget,
)

__all__ = ["run_ablation", "tasks_for", "units"]


logger = logging.getLogger(__name__)


def units(groups: Sequence[str], budget: AblationBudget) -> list[tuple[str, int, str]]:
    """(variant, seed, group) for every pretraining the groups need, each (variant, seed) once, core first.

    Core variants get ``budget.seeds`` seeds, sweep variants the first ``min(seeds, sweep_seeds)``; a variant
    in several groups gets the largest count and keeps the group that asked for it first.
    """
    wanted: dict[tuple[str, int], str] = {}
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; choose from {sorted(GROUPS)}")
        count = budget.seeds if group in FULL_GROUPS else min(budget.seeds, budget.sweep_seeds)
        for variant in GROUPS[group]:
            for seed in range(count):
                wanted.setdefault((variant, seed), group)
    return [(variant, seed, group) for (variant, seed), group in wanted.items()]


def tasks_for(variant: str, groups: Sequence[str], budget: AblationBudget, tasks: Sequence[str]) -> list[str]:
    """The tasks run for ``variant``: all of ``tasks`` for a core or control variant, ``budget.sweep_tasks`` for
    sweep-only ones."""
    full = any(g in groups and variant in GROUPS[g] for g in FULL_GROUPS)
    return [t for t in tasks if full or t in budget.sweep_tasks]


def run_ablation(
    work_dir: str | os.PathLike,
    budget: AblationBudget = DEFAULT_BUDGET,
    groups: Sequence[str] = DEFAULT_GROUPS,
    tasks: Sequence[str] = TASKS,
    real_data: str | os.PathLike | None = DEFAULT_REAL_DATA,
    resume: bool = False,
) -> dict[str, Any]:
    """Pretrain and evaluate every unit; returns ``{"records", "skipped", "timing"}`` (also cached in ``work_dir``).

    Args:
        work_dir: where data, encoders and per-unit JSON go.
        budget: the fixed budget (:py:data:`DEFAULT_BUDGET`, :py:data:`QUICK_BUDGET`, or a smaller one in tests).
        groups: keys of :py:data:`GROUPS` to run.
        tasks: subset of :py:data:`TASKS`.
        real_data: folder of the real CTs; None or a missing folder skips the real-data tasks (with a reason).
        resume: reuse cached results of the same budget; otherwise every unit is computed afresh.
    """
    if not (BUNDLES_DIR / "pretrain" / "configs" / "train.yaml").is_file():
        raise FileNotFoundError(
            f"the ablation runs the bundles of a repository checkout, and {BUNDLES_DIR} holds none: install the "
            "project from its clone (pip install -e .) and run it there."
        )
    work = Path(work_dir).resolve()
    real = Path(real_data).resolve() if real_data is not None and Path(real_data).is_dir() else None
    paths = Paths(work, real)
    skipped: dict[str, str] = {}
    run_tasks = []
    for task in tasks:
        if task not in TASK_FUNCTIONS:
            raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
        if task in REAL_TASKS and real is None:
            skipped[task] = f"real data folder {real_data} is absent"
        else:
            run_tasks.append(task)
    for task, why in skipped.items():
        logger.warning(f"task {task} skipped: {why}")
    datalist = pretraining_datalist(paths, budget)
    records, timing = [], {"pretrain": [], **{t: [] for t in run_tasks}}
    todo = units(groups, budget)
    for n, (variant, seed, _group) in enumerate(todo, 1):
        logger.info(f"[{n}/{len(todo)}] {variant}, seed {seed}")
        pretrain_json = paths.result(variant, seed, "pretrain")
        cached = read_cached(pretrain_json, budget) if resume else None
        if cached is None or not paths.encoder(variant, seed).is_file():
            content = pretrain(variant, seed, paths, budget, datalist, resume)
            cached = {"variant": variant, "seed": seed, "task": "pretrain", "budget": budget.fingerprint(), **content}
            write_result(pretrain_json, cached)
            # a new encoder invalidates the evaluations of the old one
            for task in TASKS:
                paths.result(variant, seed, task).unlink(missing_ok=True)
        if "encoder_drift" not in cached["metrics"]:  # resumed pretraining, or a record cached before the metric
            cached["metrics"]["encoder_drift"] = encoder_drift(variant, seed, paths, budget)
            write_result(pretrain_json, cached)
        timing["pretrain"].append(cached["wall_s"])
        records.append(cached)
        for task in tasks_for(variant, groups, budget, run_tasks):
            path = paths.result(variant, seed, task)
            result = read_cached(path, budget) if resume else None
            if result is None:
                logger.info(f"{variant}, seed {seed}: {task}")
                out_dir = paths.unit(variant, seed) / task
                start = time.perf_counter()
                content = TASK_FUNCTIONS[task](variant, seed, paths, budget, out_dir)
                result = {"variant": variant, "seed": seed, "task": task, "budget": budget.fingerprint(),
                          **content, "wall_s": time.perf_counter() - start}
                write_result(path, result)
            timing[task].append(result["wall_s"])
            records.append(result)
    return {"records": records, "skipped": skipped, "timing": timing, "units": todo}
