"""Experiments that compare pretraining variants end to end (``python -m dagman_components.experiments``).

- :py:mod:`.ablation`: pretrain SMIT, "SA only", "NT only" and DAGMaN (plus the loss, patch-drop-ratio and
  SA-stage sweeps, and untrained controls of SMIT and DAGMaN) at one fixed budget, evaluate every encoder on
  the downstream tasks of the papers, and write ``docs/results/ablation.md`` with CSV, JSON and plots.
"""

from .ablation import (
    DEFAULT_BUDGET,
    DEFAULT_GROUPS,
    GROUPS,
    PAPER_RESULTS,
    QUICK_BUDGET,
    TASKS,
    UNTRAINED,
    VARIANTS,
    AblationBudget,
    ablation_main,
    aggregate,
    run_ablation,
    write_report,
)

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_GROUPS",
    "GROUPS",
    "PAPER_RESULTS",
    "QUICK_BUDGET",
    "TASKS",
    "UNTRAINED",
    "VARIANTS",
    "AblationBudget",
    "aggregate",
    "ablation_main",
    "run_ablation",
    "write_report",
]
