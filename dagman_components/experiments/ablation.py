"""
The ablation suite: does attention-guided masking with a noisy teacher beat random masking here?

``python -m dagman_components.experiments ablation --seeds 3`` pretrains every variant of :py:data:`VARIANTS`
for every seed at ONE budget (:py:class:`AblationBudget`, fixed before any result was seen: the same
data, crop size, batch size and number of iterations for every variant), then evaluates each encoder:

1. ``nodule_lp`` / ``nodule_ft``: malignancy of the phantom nodules (``generate_nodule_dataset``): linear probe
   (frozen features + logistic regression) and fine-tuning (the ``nodule_classification`` bundle), AUC on
   the held-out fold of a fixed 3-fold patient-grouped split, with 100 % and 25 % of the training fold;
2. ``organs_phantom`` / ``organs_real``: organ clustering of frozen features (``analyze_clusters``):
   intra/inter-cluster distances, kNN accuracy, UMAP plot; phantom organs and crops of the real CT in
   ``<real_data>/organs``;
3. ``localization``: zero-shot localization Dice of SATT on the real tumours of ``<real_data>/sts`` and
   ``<real_data>/chest``, next to the trivial baselines of ``zero_shot_localization``;
4. ``segmentation``: few-shot tumour segmentation Dice on ``<real_data>/sts`` (the ``segmentation`` bundle
   fine-tuned on a fixed handful of cases, tested on the others);
5. ``head_diversity``: attention head diversity per stage (``compute_head_diversity``).

How: pretraining and the two fine-tuning tasks run the bundles' own configs through
``monai.bundle.ConfigWorkflow`` with overrides (the same switches a user passes on the command line), so the
suite measures exactly what a user of the bundles gets; the frozen-encoder analyses call the package's
functions. Every (variant, seed, task) result is a JSON file in ``work_dir``; ``--resume`` skips those that
exist for the same budget, so an interrupted suite continues where it stopped (an interrupted pretraining
continues from its last checkpoint). ``write_report`` aggregates mean +- std over seeds into
``<output_dir>/ablation.md``, ``ablation.csv``, ``ablation.json`` and ``ablation_*.png``.

Evaluation phantoms are generated with another seed than the pretraining phantoms, so no evaluation
volume was seen in pretraining. The real CTs, when present, are pretraining data too (unlabelled, as the
papers pretrain on unlabelled CT); their masks are only used by the evaluations.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_GROUPS",
    "GROUPS",
    "METRICS",
    "PAPER_RESULTS",
    "QUICK_BUDGET",
    "TASKS",
    "UNTRAINED",
    "VARIANTS",
    "AblationBudget",
    "Metric",
    "ablation_main",
    "aggregate",
    "compare_variants",
    "load_results",
    "paired_differences",
    "run_ablation",
    "units",
    "write_report",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO_ROOT / "bundles"
#: the real CTs next to the project (``../shared/data/real`` seen from the repository root)
DEFAULT_REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"

# ---- the variants: pretrain-bundle overrides, as data --------------------------------------------------------

#: variant name -> overrides of ``bundles/pretrain/configs/train.yaml`` (empty: the bundle's DAGMaN defaults).
#: SMIT = random masking, no SA, clean teacher, no [CLS] loss (SMIT has no [CLS] token to distil).
VARIANTS: dict[str, dict[str, Any]] = {
    "SMIT": {"masking": "random", "use_semantic_attention": False, "aitd_weight": 0.0, "teacher_drop_ratio": 0.0},
    "SA only": {"teacher_drop_ratio": 0.0},
    "NT only": {"masking": "random", "use_semantic_attention": False, "aitd_weight": 0.0},
    "DAGMaN": {},
    "DAGMaN w/o AMPD": {"ampd_weight": 0.0},
    "DAGMaN w/o AITD": {"aitd_weight": 0.0},
    "DAGMaN w/o GITD": {"gitd_weight": 0.0},
    "DAGMaN w/o AMIP": {"amip_weight": 0.0},
    "PDR 0.3": {"teacher_drop_ratio": 0.3},
    "PDR 0.5": {"teacher_drop_ratio": 0.5},
    "PDR 0.9": {"teacher_drop_ratio": 0.9},
    "SA stage 1": {"sa_stage": 1},
    "SA stage 2": {"sa_stage": 2},
    "SA stage 4": {"sa_stage": 4},
}

#: controls: an encoder that is never pretrained -> the variant whose architecture and initial weights it has.
#: Built by that variant's pretrain workflow with the same seed, so it holds exactly the weights the pretrained
#: encoder started from; pretrained minus untrained, seed by seed, is what pretraining changed.
UNTRAINED: dict[str, str] = {"SMIT, untrained": "SMIT", "DAGMaN, untrained": "DAGMaN"}
VARIANTS.update({name: VARIANTS[base] for name, base in UNTRAINED.items()})

#: comparison groups -> their variants. A sweep point equal to another variant reuses it: PDR 0 is "SA only"
#: (attention-guided masking, clean teacher), PDR 0.7 and SA stage 3 are DAGMaN.
GROUPS: dict[str, tuple[str, ...]] = {
    "core": ("SMIT", "SA only", "NT only", "DAGMaN"),
    "control": ("SMIT", "SMIT, untrained", "DAGMaN", "DAGMaN, untrained"),
    "loss": ("DAGMaN", "DAGMaN w/o AMPD", "DAGMaN w/o AITD", "DAGMaN w/o GITD", "DAGMaN w/o AMIP"),
    "pdr": ("SA only", "PDR 0.3", "PDR 0.5", "DAGMaN", "PDR 0.9"),
    "sa_stage": ("SA stage 1", "SA stage 2", "DAGMaN", "SA stage 4"),
}

#: the groups the command runs by default: what the papers ablate. The untrained controls ("control") add six
#: encoders evaluated on every task (about 20 more minutes on 2 CPU cores): ask for them with ``--only``.
DEFAULT_GROUPS: tuple[str, ...] = ("core", "loss", "pdr", "sa_stage")

#: groups whose variants run every task with ``budget.seeds`` seeds (the others are sweeps)
FULL_GROUPS: tuple[str, ...] = ("core", "control")

#: the pretrain bundle's defaults of the keys the groups vary (for labelling sweep rows)
_SWEEP_KEYS = {"pdr": ("teacher_drop_ratio", 0.7), "sa_stage": ("sa_stage", 3)}


def variant_setting(variant: str, key: str, default: Any) -> Any:
    """The value of pretrain-config ``key`` in ``variant`` (``default``: the bundle's value)."""
    return VARIANTS[variant].get(key, default)


def slug(name: str) -> str:
    """A file-system name for a variant: ``"DAGMaN w/o AMPD"`` -> ``"dagman_wo_ampd"``."""
    return "".join(c if c.isalnum() else "_" for c in name.lower().replace("w/o", "wo")).strip("_").replace("__", "_")


# ---- the budget ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationBudget:
    """Everything that sets the cost of the suite, fixed before results are seen; identical for every variant.

    Pretraining (``bundles/pretrain/configs/train.yaml`` keys): ``roi_size`` (64, the bundle's), ``batch_size`` (2),
    ``pretrain_epochs`` over ``pretrain_phantoms`` phantom volumes (seed 0) plus, when present, the real CTs
    (``use_real_pretraining``); ``feature_size`` 12 and the DINO head sizes as the bundle's [small] defaults.
    Seeds: ``seeds`` for the core variants, ``sweep_seeds`` (the first ones) for the loss/PDR/SA-stage sweeps.

    Evaluation: phantoms of seed ``eval_phantom_seed`` (never seen in pretraining); the nodule task on
    ``nodule_volumes`` phantoms (4 nodules each), 32^3 crops, ``nodule_folds``-fold patient-grouped split
    (split seed ``split_seed``), few-shot ``few_shot_fraction``; fine-tuning ``ft_epochs`` epochs on
    ``ft_folds`` folds; organ crops from ``organ_volumes`` phantoms at ``organ_image_size``; zero-shot
    localization on ``localization_cases`` STS cases (None: all) plus the chest CTs, with
    ``localization_random_crops`` off-centre crops per case; segmentation fine-tuned on ``seg_train_cases``
    STS cases for ``seg_epochs`` epochs and tested on ``seg_test_cases`` others (None: all the rest);
    head diversity over ``head_diversity_volumes`` phantom crops. ``sweep_tasks``: the tasks run for the sweeps.
    """

    seeds: int = 3
    sweep_seeds: int = 2
    roi_size: int = 64
    batch_size: int = 2
    pretrain_epochs: int = 2
    pretrain_phantoms: int = 8
    use_real_pretraining: bool = True
    feature_size: int = 12
    head_out_dim: int = 1024
    head_hidden_dim: int = 256
    head_bottleneck_dim: int = 64
    warmup_epochs: int = 1
    warmup_teacher_temp_epochs: int = 1
    eval_phantom_seed: int = 1
    split_seed: int = 0
    nodule_volumes: int = 12
    nodule_folds: int = 3
    few_shot_fraction: float = 0.25
    ft_epochs: int = 4
    ft_folds: int = 1
    organ_volumes: int = 4
    organ_image_size: int = 64
    crops_per_organ: int = 4
    localization_cases: int | None = None
    localization_random_crops: int = 1
    seg_train_cases: int = 5
    seg_test_cases: int | None = None
    seg_epochs: int = 6
    seg_roi_size: int = 64
    head_diversity_volumes: int = 4
    sweep_tasks: tuple[str, ...] = ("nodule_lp", "organs_phantom", "head_diversity")

    def fingerprint(self) -> str:
        """Short hash of every field except the seed counts: cached results are reused only under the same budget."""
        content = {k: v for k, v in asdict(self).items() if k not in ("seeds", "sweep_seeds")}
        return hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: the default suite (all groups, 3 seeds for the core variants, 2 for the sweeps): estimated < 2 h on 2 CPU cores.
DEFAULT_BUDGET = AblationBudget()
#: ``--quick``: one seed, the core variants, tiny pretraining and evaluation (CI smoke test, < 15 min).
QUICK_BUDGET = AblationBudget(
    seeds=1, sweep_seeds=1, pretrain_epochs=1, use_real_pretraining=False, nodule_volumes=6, ft_epochs=1,
    organ_volumes=2, crops_per_organ=3, organ_image_size=32, localization_cases=3, localization_random_crops=0,
    seg_train_cases=2, seg_test_cases=2, seg_epochs=1, head_diversity_volumes=2,
)


# ---- tasks and their metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One row of the report: ``key`` in a task's JSON, its label, and the papers' value (their data) if any.

    ``scale_free``: False for feature-space distances, which change with the encoder's feature scale (pretraining
    rescales it), so comparing them between encoders says little.
    """

    key: str
    task: str
    label: str
    higher_is_better: bool | None = True
    paper: Mapping[str, str] = field(default_factory=dict)
    scale_free: bool = True


#: the papers' numbers (DESIGN.md section 4), on THEIR data: LIDC (nodules), OrganMNIST3D (organs), SMART's tumours.
PAPER_RESULTS: dict[str, dict[str, str]] = {
    "ft_auc": {"DAGMaN": "0.895 (LIDC)", "SMIT": "0.859 (LIDC)"},
    "lp_auc": {"DAGMaN": "0.642 (LIDC)", "SMIT": "0.629 (LIDC)"},
    "organs_phantom_intra": {"DAGMaN": "1.28 +- 0.57 (OrganMNIST3D)", "SMIT": "1.53 +- 0.45 (OrganMNIST3D)"},
    "organs_phantom_inter": {"DAGMaN": "5.93 +- 3.30 (OrganMNIST3D)", "SMIT": "3.73 +- 2.74 (OrganMNIST3D)"},
    "organs_real_intra": {"DAGMaN": "1.28 +- 0.57 (OrganMNIST3D)", "SMIT": "1.53 +- 0.45 (OrganMNIST3D)"},
    "organs_real_inter": {"DAGMaN": "5.93 +- 3.30 (OrganMNIST3D)", "SMIT": "3.73 +- 2.74 (OrganMNIST3D)"},
    "loc_dice": {"DAGMaN": "0.62 +- 0.32 (SMART, their tumours)"},
}
PAPER_COLUMN = "paper (theirs, LIDC / OrganMNIST3D / SMART tumours)"

METRICS: tuple[Metric, ...] = tuple(
    Metric(key, task, label, better, PAPER_RESULTS.get(key, {}), scale_free=not key.endswith(("_intra", "_inter")))
    for key, task, label, better in (
        ("encoder_drift", "pretrain", "encoder weights, relative L2 change from initialisation by pretraining", None),
        ("lp_auc", "nodule_lp", "nodule malignancy, linear probe AUC (100 %)", True),
        ("lp_auc_25", "nodule_lp", "nodule malignancy, linear probe AUC (25 %)", True),
        ("lp_auc_pooled", "nodule_lp", "nodule malignancy, linear probe AUC on pooled stage 4 (100 %)", True),
        ("ft_auc", "nodule_ft", "nodule malignancy, fine-tune AUC (100 %)", True),
        ("ft_auc_25", "nodule_ft", "nodule malignancy, fine-tune AUC (25 %)", True),
        ("organs_phantom_intra", "organs_phantom", "phantom organs, intra-cluster distance", False),
        ("organs_phantom_inter", "organs_phantom", "phantom organs, inter-cluster distance", True),
        ("organs_phantom_ratio", "organs_phantom", "phantom organs, inter / intra", True),
        ("organs_phantom_knn", "organs_phantom", "phantom organs, kNN accuracy", True),
        ("organs_real_intra", "organs_real", "real CT organs, intra-cluster distance", False),
        ("organs_real_inter", "organs_real", "real CT organs, inter-cluster distance", True),
        ("organs_real_ratio", "organs_real", "real CT organs, inter / intra", True),
        ("organs_real_knn", "organs_real", "real CT organs, kNN accuracy", True),
        ("loc_dice", "localization", "zero-shot localization Dice, whole volumes (STS + chest)", True),
        ("loc_dice_crop", "localization", "zero-shot localization Dice, off-centre crops", True),
        ("seg_dice", "segmentation", "few-shot STS tumour segmentation Dice", True),
        ("hd_stage3_entropy_mean", "head_diversity", "stage 3 entropy of attention distances, mean over heads", True),
        ("hd_stage3_entropy_var", "head_diversity", "stage 3 entropy of attention distances, variance over heads", True),
    )
)

PHANTOM_TASKS: tuple[str, ...] = ("nodule_lp", "nodule_ft", "organs_phantom", "head_diversity")
REAL_TASKS: tuple[str, ...] = ("organs_real", "localization", "segmentation")
#: every task, in the order they run for one encoder
TASKS: tuple[str, ...] = PHANTOM_TASKS + REAL_TASKS
#: the package modules each task needs; a task whose module is missing is reported "not yet available"
_TASK_MODULES = {
    "nodule_lp": "dagman_components.analysis.features",
    "nodule_ft": "dagman_components.networks.classifier",
    "organs_phantom": "dagman_components.analysis.clustering",
    "organs_real": "dagman_components.analysis.clustering",
    "localization": "dagman_components.analysis.localization",
    "segmentation": "dagman_components.networks.segmentation",
    "head_diversity": "dagman_components.analysis.head_diversity",
}


def available_tasks() -> dict[str, str | None]:
    """Task -> None if its package code imports, else why not."""
    import importlib

    status: dict[str, str | None] = {}
    for task, module in _TASK_MODULES.items():
        try:
            importlib.import_module(module)
            status[task] = None
        except ImportError as err:
            status[task] = f"not yet available ({module}: {err})"
    return status


# ---- work-dir layout and the result cache ----------------------------------------------------------------------


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


# ---- data shared by all variants -------------------------------------------------------------------------------


def pretraining_datalist(paths: Paths, budget: AblationBudget) -> Path:
    """A Decathlon JSON of the pretraining volumes: phantoms (seed 0) plus the real CTs (masks excluded) if used."""
    from dagman_components.data import generate_phantom_dataset, load_datalist

    phantom_dir = paths.data / "pretrain_phantoms"
    phantom_json = generate_phantom_dataset(phantom_dir, num_volumes=budget.pretrain_phantoms,
                                            shape=(112, 112, 96), seed=0)
    items = [{"image": item["image"]} for item in load_datalist(dataset_dir=phantom_dir, datalist=phantom_json)]
    if budget.use_real_pretraining and paths.real_data is not None:
        # a folder scan skips files whose path holds mask/seg/label/lesion: the tumour masks and organ label map
        items += [{"image": item["image"]} for item in load_datalist(dataset_dir=paths.real_data)]
    path = paths.data / "pretrain_datalist.json"
    write_result(path, {"name": "ablation-pretraining", "numTraining": len(items), "training": items})
    return path


def pretrain_overrides(budget: AblationBudget) -> dict[str, Any]:
    """The budget as pretrain-bundle overrides (identical for every variant)."""
    return {
        "roi_size": [budget.roi_size] * 3,
        "batch_size": budget.batch_size,
        "num_epochs": budget.pretrain_epochs,
        "warmup_epochs": budget.warmup_epochs,
        "warmup_teacher_temp_epochs": budget.warmup_teacher_temp_epochs,
        "feature_size": budget.feature_size,
        "head_out_dim": budget.head_out_dim,
        "head_hidden_dim": budget.head_hidden_dim,
        "head_bottleneck_dim": budget.head_bottleneck_dim,
        "num_workers": 0,
    }


def encoder_arguments(variant: str, budget: AblationBudget) -> dict[str, Any]:
    """``SASwinEncoder`` arguments of a variant's pretrained encoder (the rest are the bundle's defaults).

    The encoder files carry their architecture; these arguments check it, and give it to the bare state
    dicts that runs of earlier versions wrote.
    """
    return {
        "feature_size": budget.feature_size,
        "sa_stage": int(variant_setting(variant, "sa_stage", 3)),
        "use_semantic_attention": bool(variant_setting(variant, "use_semantic_attention", True)),
    }


def papers_feature(variant: str) -> str:
    """The papers' frozen feature: [CLS] for encoders with SA (DAGMaN/SMART), pooled last stage otherwise (SMIT)."""
    return "cls" if variant_setting(variant, "use_semantic_attention", True) else "pooled"


def load_encoder(variant: str, seed: int, paths: Paths, budget: AblationBudget):
    """The pretrained encoder of (variant, seed), in eval mode on the CPU."""
    from dagman_components.networks import SASwinEncoder

    return SASwinEncoder.from_pretrained(paths.encoder(variant, seed), **encoder_arguments(variant, budget)).eval()


# ---- pretraining through the bundle ------------------------------------------------------------------------------


def _workflow(config_file: Path, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigWorkflow

    bundle = config_file.parent.parent
    return ConfigWorkflow(
        config_file=str(config_file),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **overrides,
    )


def _pretrain_workflow(variant: str, seed: int, paths: Paths, budget: AblationBudget, datalist: Path,
                       continue_run: bool, output_dir: Path | None = None):
    """The pretrain bundle's workflow of (variant, seed), initialised and with its trainer built (not run).

    The trainer is built here, before anything runs, so that the network is created in the same order of
    random draws in :py:func:`pretrain` and in :py:func:`initial_encoder_state`.
    """
    overrides = {
        **pretrain_overrides(budget),
        **VARIANTS[variant],
        "seed": seed,
        "bundle_root": str(BUNDLES_DIR / "pretrain"),
        "output_dir": str(output_dir or paths.unit(variant, seed) / "pretrain"),
        "phantom_dir": str(paths.data / "pretrain_phantoms"),
        "dataset_dir": str(paths.data),
        "datalist": str(datalist),
        "resume": continue_run,
        "train::dataset": {
            "_target_": "PersistentDataset",
            "data": "@train_data",
            "transform": "@train::preprocessing",
            "cache_dir": str(paths.data / "cache" / f"pretrain_{budget.roi_size}"),
        },
    }
    workflow = _workflow(BUNDLES_DIR / "pretrain" / "configs" / "train.yaml", overrides)
    workflow.initialize()
    workflow.parser.get_parsed_content("train::trainer")
    return workflow, {k: v for k, v in overrides.items() if k != "train::dataset"}


def _encoder(workflow) -> torch.nn.Module:
    from dagman_components.engines import unwrap

    return unwrap(workflow.parser.get_parsed_content("network")).encoder


def _encoder_state(workflow) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in _encoder(workflow).state_dict().items()}


def _saved_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    from dagman_components.networks import read_encoder_file

    return read_encoder_file(path)[1]


def relative_change(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """``||state - reference|| / ||reference||`` over every floating-point tensor of ``reference`` (L2 norm).

    Raises:
        KeyError: a tensor of ``reference`` is missing from ``state``.
    """
    missing = [k for k in reference if k not in state]
    if missing:
        raise KeyError(f"state lacks {len(missing)} tensors of the reference, e.g. {missing[:3]}")
    change = sum(float(((state[k].double() - v.double()) ** 2).sum()) for k, v in reference.items() if v.is_floating_point())
    norm = sum(float((v.double() ** 2).sum()) for v in reference.values() if v.is_floating_point())
    return math.sqrt(change / norm)


def initial_encoder_state(variant: str, seed: int, paths: Paths, budget: AblationBudget) -> dict[str, torch.Tensor]:
    """The encoder weights (variant, seed) started pretraining from, rebuilt from the bundle and the seed.

    The bundle seeds everything (``set_determinism(seed)``) before it builds the network, so building the same
    workflow again gives the same initial weights; nothing is trained or read from the pretraining data.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # its handlers create log and checkpoint folders
        workflow, _ = _pretrain_workflow(variant, seed, paths, budget, paths.data / "pretrain_datalist.json", False,
                                         output_dir=Path(scratch))
        return _encoder_state(workflow)


def encoder_drift(variant: str, seed: int, paths: Paths, budget: AblationBudget) -> float:
    """Relative L2 change of the pretrained encoder of (variant, seed) from its initial weights.

    How far pretraining moved the encoder: a value of a few percent means that the evaluations mostly
    measure the architecture and its random initialisation, not what pretraining learnt.
    """
    trained = _saved_encoder_state(paths.encoder(variant, seed))
    return relative_change(trained, initial_encoder_state(variant, seed, paths, budget))


def pretrain(variant: str, seed: int, paths: Paths, budget: AblationBudget, datalist: Path, resume: bool) -> dict:
    """Run ``bundles/pretrain/configs/train.yaml`` for (variant, seed); returns the run's record.

    The deterministic preprocessing is cached on disk once for all variants (``PersistentDataset`` in
    ``work_dir/data/cache``) instead of the bundle's in-memory ``CacheDataset``: same transforms, same
    items, loaded once instead of once per run. With ``resume`` an interrupted run continues from its
    newest checkpoint (the bundle's ``--resume``). The record's ``encoder_drift`` is the relative change of
    the saved encoder from the weights the run started from (:py:func:`relative_change`).

    A control of :py:data:`UNTRAINED` builds the same workflow and saves the initial encoder without training.
    """
    from dagman_components.engines import latest_checkpoint

    ckpt_dir = paths.unit(variant, seed) / "pretrain" / "models"
    continue_run = bool(resume and ckpt_dir.is_dir() and latest_checkpoint(ckpt_dir) is not None)
    if ckpt_dir.is_dir() and not continue_run:
        shutil.rmtree(ckpt_dir)
    start = time.perf_counter()
    workflow, overrides = _pretrain_workflow(variant, seed, paths, budget, datalist, continue_run)
    initial = _encoder_state(workflow)
    if variant in UNTRAINED:
        from dagman_components.networks import save_encoder

        save_encoder(_encoder(workflow), paths.encoder(variant, seed))  # as the bundle writes it: self-describing
        return {"metrics": {"iterations": 0, "epochs": 0, "final_loss": math.nan, "encoder_drift": 0.0},
                "final_output": {}, "overrides": overrides, "resumed": False, "untrained": True,
                "wall_s": time.perf_counter() - start}
    workflow.run()
    state = workflow.parser.get_parsed_content("train::trainer").state
    output = {k: float(v) for k, v in (state.output or {}).items() if isinstance(v, (int, float))}
    if not paths.encoder(variant, seed).is_file():
        raise RuntimeError(f"pretraining of {variant!r} seed {seed} wrote no encoder at {paths.encoder(variant, seed)}")
    wall_s = time.perf_counter() - start
    metrics = {"iterations": int(state.iteration), "epochs": int(state.epoch), "final_loss": output.get("loss", math.nan)}
    if not continue_run:  # a resumed run starts from a checkpoint, not from the initial weights
        trained = _saved_encoder_state(paths.encoder(variant, seed))
        metrics["encoder_drift"] = relative_change(trained, initial)
    return {"metrics": metrics, "final_output": output, "overrides": overrides, "resumed": continue_run,
            "wall_s": wall_s}


# ---- evaluations -------------------------------------------------------------------------------------------------


def _nodule_items(paths: Paths, budget: AblationBudget) -> list[dict[str, Any]]:
    from dagman_components.data import generate_nodule_dataset, load_classification_datalist

    datalist = generate_nodule_dataset(paths.data / "eval_nodules", num_volumes=budget.nodule_volumes,
                                       seed=budget.eval_phantom_seed)
    return load_classification_datalist(datalist)


def _frozen_features(encoder, feature: str, items: Sequence[Mapping[str, Any]], transform) -> tuple[np.ndarray, np.ndarray]:
    from monai.data import DataLoader, Dataset

    from dagman_components.analysis import EncoderFeatures, extract_features

    loader = DataLoader(Dataset(list(items), transform), batch_size=8, shuffle=False, num_workers=0)
    return extract_features(EncoderFeatures(encoder, feature), loader, log_every=1000)


def linear_probe_auc(features: np.ndarray, labels: np.ndarray, items: Sequence[Mapping[str, Any]],
                     budget: AblationBudget, fraction: float) -> list[float]:
    """AUC per fold of a logistic-regression probe on frozen features (fixed patient-grouped folds).

    **[choice]** the papers' "linear probing with one projection head" as scikit-learn's
    ``LogisticRegression`` on standardised features: one linear layer fitted to convergence, no
    learning-rate schedule to tune per variant.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dagman_components.data import kfold_split, subset_fraction
    from dagman_components.metrics import binary_classification_metrics

    indexed = [{**item, "index": i} for i, item in enumerate(items)]
    aucs = []
    for fold in range(budget.nodule_folds):
        train, val = kfold_split(indexed, num_folds=budget.nodule_folds, fold=fold, seed=budget.split_seed,
                                 stratify_key="label", group_key="patient_id")
        train = subset_fraction(train, fraction, seed=budget.split_seed, stratify_key="label")
        train_idx, val_idx = [t["index"] for t in train], [v["index"] for v in val]
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(features[train_idx], labels[train_idx])
        scores = probe.predict_proba(features[val_idx])[:, 1]
        aucs.append(binary_classification_metrics(labels[val_idx], scores)["auc"])
    return aucs


def task_nodule_lp(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Linear probe on the phantom nodules: papers' feature at 100 % and few-shot, and pooled stage 4 at 100 %."""
    from dagman_components.data import classification_transforms

    items = _nodule_items(paths, budget)
    encoder = load_encoder(variant, seed, paths, budget)
    transform = classification_transforms(roi_size=(32, 32, 32), augment=False)
    feature = papers_feature(variant)
    features, labels = _frozen_features(encoder, feature, items, transform)
    per_fold = {"lp_auc": linear_probe_auc(features, labels, items, budget, 1.0),
                "lp_auc_25": linear_probe_auc(features, labels, items, budget, budget.few_shot_fraction)}
    if feature == "pooled":
        per_fold["lp_auc_pooled"] = per_fold["lp_auc"]
    else:
        pooled, _ = _frozen_features(encoder, "pooled", items, transform)
        per_fold["lp_auc_pooled"] = linear_probe_auc(pooled, labels, items, budget, 1.0)
    return {"metrics": {k: float(np.nanmean(v)) for k, v in per_fold.items()}, "per_fold": per_fold,
            "feature": feature, "num_nodules": len(items), "num_malignant": int(labels.sum())}


def task_nodule_ft(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Fine-tuning through ``bundles/nodule_classification/configs/train.yaml``: AUC of the final epoch on the held-out fold.

    **[choice]** the final epoch's AUC, not the best over epochs: choosing the epoch on the test fold would
    flatter every variant by a different amount.
    """
    _nodule_items(paths, budget)  # generated once, outside the bundle
    config = BUNDLES_DIR / "nodule_classification" / "configs" / "train.yaml"
    per_fold: dict[str, list[float]] = {"ft_auc": [], "ft_auc_25": []}
    for key, fraction in (("ft_auc", 1.0), ("ft_auc_25", budget.few_shot_fraction)):
        for fold in range(budget.ft_folds):
            run_dir = out_dir / f"{key}_fold{fold}"
            overrides = {
                "bundle_root": str(BUNDLES_DIR / "nodule_classification"),
                "output_dir": str(run_dir),
                "phantom_dir": str(paths.data / "eval_nodules"),
                "dataset_dir": str(paths.data / "eval_nodules"),
                "phantom": {"num_volumes": budget.nodule_volumes, "nodules_per_volume": 4, "shape": [112, 112, 96],
                            "spacing": [2.0, 2.0, 2.0], "crop_size": [32, 32, 32], "seed": budget.eval_phantom_seed},
                "pretrained": True,
                "pretrained_path": str(paths.encoder(variant, seed)),
                "feature": papers_feature(variant),
                "encoder_args": encoder_arguments(variant, budget),  # used only by a bare state dict
                "num_folds": budget.nodule_folds,
                "fold": fold,
                "train_fraction": fraction,
                "num_epochs": budget.ft_epochs,
                "val_interval": budget.ft_epochs,  # validate once, after the last epoch
                "seed": budget.split_seed,
            }
            workflow = _workflow(config, overrides)
            workflow.initialize()
            workflow.run()
            metrics = workflow.parser.get_parsed_content("validate::evaluator").state.metrics
            per_fold[key].append(float(metrics["val_auc"]))
            shutil.rmtree(run_dir / "models", ignore_errors=True)  # fine-tuned weights are not needed afterwards
    return {"metrics": {k: float(np.nanmean(v)) for k, v in per_fold.items()}, "per_fold": per_fold,
            "feature": papers_feature(variant)}


def _organ_metrics(result: Mapping[str, Any], prefix: str) -> dict[str, float]:
    distances = result["distances"]["features"]
    intra, inter = distances["intra_cluster"]["mean"], distances["inter_cluster"]["mean"]
    knn = result["knn"]["accuracy_mean"]
    return {f"{prefix}_intra": intra, f"{prefix}_inter": inter,
            f"{prefix}_ratio": inter / intra if intra > 0 else math.nan,
            f"{prefix}_knn": math.nan if knn is None else float(knn)}


def _organ_clustering(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path,
                      organ_data, prefix: str) -> dict:
    from dagman_components.analysis import analyze_clusters
    from dagman_components.data import organ_transforms

    encoder = load_encoder(variant, seed, paths, budget)
    feature = papers_feature(variant)
    transform = organ_transforms(image_size=budget.organ_image_size, from_arrays=organ_data.from_arrays)
    features, labels = _frozen_features(encoder, feature, organ_data.items, transform)
    result = analyze_clusters(features, labels, out_dir, class_names=organ_data.class_names, seed=budget.split_seed,
                              title=f"{variant} (seed {seed}), {prefix.split('_')[1]} organs, {feature}",
                              prefix=prefix)
    return {"metrics": _organ_metrics(result, prefix), "feature": feature, "num_samples": result["num_samples"],
            "classes": result["classes"], "files": result["files"],
            "umap_distances": result["distances"]["umap"]}


def task_organs_phantom(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Organ clustering of the evaluation phantoms' organs (lung, bone, heart, liver, kidney, spleen)."""
    from dagman_components.data import prepare_organ_data

    data = prepare_organ_data("phantom", paths.data / "eval_organ_phantoms", crops_dir=paths.data / "organ_crops_phantom",
                              phantom_volumes=budget.organ_volumes, seed=budget.eval_phantom_seed,
                              organs=["lung", "bone", "heart", "liver", "kidney", "spleen"],
                              crops_per_organ=budget.crops_per_organ)
    return _organ_clustering(variant, seed, paths, budget, out_dir, data, "organs_phantom")


def task_organs_real(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Organ clustering of crops of the real CT in ``<real_data>/organs`` (TotalSegmentator labels, grouped as the
    organ_clustering bundle's ``configs/totalsegmentator.yaml``)."""
    from monai.bundle import ConfigParser

    from dagman_components.data import prepare_organ_data

    groups = ConfigParser.load_config_file(str(BUNDLES_DIR / "organ_clustering" / "configs" / "totalsegmentator.yaml"))
    # the example label map covers the CT's last slices although its header places it at the first ones
    data = prepare_organ_data("label_map", paths.real_data / "organs", crops_dir=paths.data / "organ_crops_real",
                              image_file="example_ct.nii.gz", label_file="example_seg.nii.gz",
                              label_names="totalsegmentator", organ_groups=groups["organ_groups"],
                              label_offset=[0, 0, 82], crops_per_organ=budget.crops_per_organ, seed=budget.split_seed)
    return _organ_clustering(variant, seed, paths, budget, out_dir, data, "organs_real")


def _tumour_items(real_data: Path, budget: AblationBudget) -> list[dict[str, Any]]:
    from dagman_components.analysis import image_label_datalist

    sts = image_label_datalist(real_data / "sts", image_glob="*/CT_image.nii.gz", label_replace=("CT_image", "CT_mask"))
    chest = image_label_datalist(real_data / "chest", image_glob="*_ct.nii.gz", label_replace=("_ct", "_lesion"))
    if budget.localization_cases is not None:
        sts = sts[: budget.localization_cases]
    return sts + chest


def task_localization(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Zero-shot localization Dice of SATT (90th percentile inside the body) on STS + chest, and the baselines."""
    from dagman_components.analysis import run_zero_shot_localization

    if not variant_setting(variant, "use_semantic_attention", True):
        return {"metrics": {}, "skipped": "no semantic attention module, hence no SATT map"}
    encoder = load_encoder(variant, seed, paths, budget)
    result = run_zero_shot_localization(encoder, _tumour_items(paths.real_data, budget), out_dir, num_overlays=2,
                                        name="encoder", seed=budget.split_seed,
                                        num_random_crops=budget.localization_random_crops)
    summary = result["summary"]
    metrics = {"loc_dice": summary["full"]["encoder"]["mean"]}
    baselines = {f"full_{m}": s["mean"] for m, s in summary["full"].items() if m != "encoder"}
    if "random_crop" in summary:
        metrics["loc_dice_crop"] = summary["random_crop"]["encoder"]["mean"]
        baselines.update({f"crop_{m}": s["mean"] for m, s in summary["random_crop"].items() if m != "encoder"})
    return {"metrics": metrics, "baselines": baselines, "summary": summary}


def segmentation_split(real_data: Path, budget: AblationBudget) -> tuple[list[dict], list[dict]]:
    """The fixed few-shot split of the STS cases: ``seg_train_cases`` to fine-tune, the others (or
    ``seg_test_cases`` of them) to test, drawn once with ``split_seed``."""
    from dagman_components.data import case_folder_datalist

    items = case_folder_datalist(real_data / "sts", "CT_image.nii.gz", "CT_mask.nii.gz")
    order = np.random.default_rng(budget.split_seed).permutation(len(items))
    train = [items[i] for i in sorted(order[: budget.seg_train_cases])]
    rest = [items[i] for i in sorted(order[budget.seg_train_cases:])]
    return train, rest if budget.seg_test_cases is None else rest[: budget.seg_test_cases]


def task_segmentation(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Few-shot STS tumour segmentation through ``bundles/segmentation/configs/train.yaml``: test Dice after the last epoch."""
    train, test = segmentation_split(paths.real_data, budget)
    overrides = {
        "bundle_root": str(BUNDLES_DIR / "segmentation"),
        "output_dir": str(out_dir),
        "dataset_dir": str(paths.real_data / "sts"),
        "train_data": train,
        "val_data": test,
        "target_labels": None,
        "pretrained": True,
        "pretrained_path": str(paths.encoder(variant, seed)),
        "encoder_args": encoder_arguments(variant, budget),  # used only by a bare state dict
        "roi_size": [budget.seg_roi_size] * 3,
        "num_epochs": budget.seg_epochs,
        "val_interval": budget.seg_epochs,  # test once, after the last epoch
        "cache_workers": 1,
        "seed": budget.split_seed,
    }
    workflow = _workflow(BUNDLES_DIR / "segmentation" / "configs" / "train.yaml", overrides)
    workflow.initialize()
    workflow.run()
    metrics = workflow.parser.get_parsed_content("validate::evaluator").state.metrics
    shutil.rmtree(out_dir / "models", ignore_errors=True)
    return {"metrics": {"seg_dice": float(metrics["val_mean_dice"])},
            "hd95": float(metrics.get("val_hd95", math.nan)),
            "train_cases": [Path(t["image"]).parent.name for t in train],
            "test_cases": [Path(t["image"]).parent.name for t in test]}


def task_head_diversity(variant: str, seed: int, paths: Paths, budget: AblationBudget, out_dir: Path) -> dict:
    """Per-stage attention head diversity over centre crops of evaluation phantoms (DAGMaN Fig. 4a)."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import CenterSpatialCropd, Compose, SelectItemsd

    from dagman_components.analysis import compute_head_diversity
    from dagman_components.data import ct_preprocessing, generate_phantom_dataset, load_datalist

    folder = paths.data / "eval_organ_phantoms"
    datalist = generate_phantom_dataset(folder, num_volumes=budget.organ_volumes, seed=budget.eval_phantom_seed)
    items = load_datalist(dataset_dir=folder, datalist=datalist)[: budget.head_diversity_volumes]
    roi = [budget.roi_size] * 3
    transform = Compose(ct_preprocessing(keys=["image"], roi_size=roi)
                        + [CenterSpatialCropd("image", roi_size=roi), SelectItemsd("image")])
    encoder = load_encoder(variant, seed, paths, budget)
    result = compute_head_diversity(encoder, DataLoader(Dataset(items, transform), batch_size=1, num_workers=0))
    metrics = {}
    for entry in result["stages"]:
        name = f"stage{entry['stage']}" if entry["stage"] != "SA" else "sa"
        metrics[f"hd_{name}_entropy_mean"] = entry["distance_entropy"]["mean"]
        metrics[f"hd_{name}_entropy_var"] = entry["distance_entropy"]["var"]
        metrics[f"hd_{name}_distance_mm"] = entry["attention_distance_mm"]["mean"]
    write_result(out_dir / "head_diversity.json", result)
    return {"metrics": metrics, "files": {"json": str(out_dir / "head_diversity.json")}}


TASK_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "nodule_lp": task_nodule_lp,
    "nodule_ft": task_nodule_ft,
    "organs_phantom": task_organs_phantom,
    "organs_real": task_organs_real,
    "localization": task_localization,
    "segmentation": task_segmentation,
    "head_diversity": task_head_diversity,
}


# ---- the suite ------------------------------------------------------------------------------------------------


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
    availability = available_tasks()
    skipped: dict[str, str] = {}
    run_tasks = []
    for task in tasks:
        if task not in TASK_FUNCTIONS:
            raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
        if availability.get(task):
            skipped[task] = availability[task]  # type: ignore[assignment]
        elif task in REAL_TASKS and real is None:
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


def load_results(work_dir: str | os.PathLike, budget: AblationBudget) -> list[dict[str, Any]]:
    """Every cached unit result under ``work_dir`` computed with ``budget``."""
    found = []
    for path in sorted(Path(work_dir, "runs").glob("*/seed*/*.json")):
        content = read_cached(path, budget)
        if content is not None:
            found.append(content)
    return found


# ---- aggregation ----------------------------------------------------------------------------------------------


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean +- std over seeds of every metric: ``{variant: {metric: {"mean", "std", "n", "values"}}}``.

    ``std`` is the sample standard deviation (``ddof=1``) over the seeds, None with a single seed; NaN values
    (an undefined AUC) are left out and counted in ``n`` only when finite.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for key, value in record.get("metrics", {}).items():
            values.setdefault(record["variant"], {}).setdefault(key, []).append(
                math.nan if value is None else float(value))
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, metrics in values.items():
        for key, raw in metrics.items():
            finite = [v for v in raw if math.isfinite(v)]
            summary.setdefault(variant, {})[key] = {
                "mean": float(np.mean(finite)) if finite else None,
                "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                "n": len(finite),
                "values": raw,
            }
    return summary


def format_mean_std(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.812 +- 0.034"``, ``"0.812 (n=1)"`` with one seed, ``"-"`` when missing."""
    if not entry or entry.get("mean") is None:
        return "-"
    if entry.get("std") is None:
        return f"{entry['mean']:.{digits}f} (n={entry['n']})"
    return f"{entry['mean']:.{digits}f} +- {entry['std']:.{digits}f}"


# ---- the report ---------------------------------------------------------------------------------------------------


def hardware() -> dict[str, Any]:
    """CPU model, cores, torch/MONAI versions and the device the suite ran on."""
    import monai

    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "device": "cuda:0" if torch.cuda.is_available() else "cpu"}


def _metrics_of(summary: Mapping[str, Mapping[str, Any]], variants: Sequence[str], every: bool = False) -> list[Metric]:
    """The rows of :py:data:`METRICS` measured for any of ``variants`` (``every``: for all of them)."""
    keys = [set(summary.get(v, {})) for v in variants]
    present = (set.intersection(*keys) if every else set.union(*keys)) if keys else set()
    return [m for m in METRICS if m.key in present]


def _paper_text(metric: Metric) -> str:
    return "; ".join(f"{v}: {text}" for v, text in metric.paper.items()) or "-"


def compare_variants(summary: Mapping[str, Mapping[str, Any]], variant: str,
                     reference: str) -> tuple[list[str], list[str], list[str]]:
    """Labels of the metrics on which ``variant`` is better than ``reference``, worse, and within the spread.

    Better/worse: the means differ by more than one standard deviation, the larger of the two variants'
    seed-to-seed standard deviations, in the metric's direction. Metrics without a direction
    (``higher_is_better=None``) or not measured for both are left out.
    """
    better, worse, tied = [], [], []
    for metric in METRICS:
        a, b = summary[variant].get(metric.key), summary[reference].get(metric.key)
        if not a or not b or a["mean"] is None or b["mean"] is None or metric.higher_is_better is None:
            continue
        spread = max(a["std"] or 0.0, b["std"] or 0.0)
        diff = a["mean"] - b["mean"]
        wins = diff > 0 if metric.higher_is_better else diff < 0
        if abs(diff) <= spread or diff == 0:
            tied.append(metric.label)
        elif wins:
            better.append(metric.label)
        else:
            worse.append(metric.label)
    return better, worse, tied


def paired_differences(records: Iterable[Mapping[str, Any]], variant: str, reference: str, key: str) -> list[float]:
    """``variant`` minus ``reference`` of metric ``key``, seed by seed, over the seeds where both are finite."""
    by_seed: dict[str, dict[int, float]] = {variant: {}, reference: {}}
    for record in records:
        value = record.get("metrics", {}).get(key)
        if record["variant"] in by_seed and value is not None and math.isfinite(float(value)):
            by_seed[record["variant"]][int(record["seed"])] = float(value)
    return [by_seed[variant][s] - by_seed[reference][s] for s in sorted(by_seed[variant]) if s in by_seed[reference]]


def _verdict(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain sentences comparing DAGMaN with SMIT metric by metric, from the numbers alone."""
    if "DAGMaN" not in summary or "SMIT" not in summary:
        return ["DAGMaN and SMIT were not both run: no comparison."]
    better, worse, tied = compare_variants(summary, "DAGMaN", "SMIT")
    n = len(better) + len(worse) + len(tied)
    single_seed = all(e["n"] < 2 for v in ("DAGMaN", "SMIT") for e in summary[v].values())
    if single_seed:
        lines = [f"With a single seed there is no spread to compare against: of {n} metrics measured for both, "
                 f"DAGMaN is ahead of SMIT on {len(better)}, behind on {len(worse)} and equal on {len(tied)}, and "
                 "none of these differences is tested. Run with several seeds before drawing any conclusion."]
    else:
        lines = [f"Of {n} metrics measured for both, DAGMaN is better than SMIT by more than one standard deviation "
                 f"(the larger of the two variants' seed-to-seed standard deviations) on {len(better)}, worse by "
                 f"more than one standard deviation on {len(worse)}, and within one standard deviation on "
                 f"{len(tied)}."]
    if better:
        lines.append("Better: " + "; ".join(better) + ".")
    if worse:
        lines.append("Worse: " + "; ".join(worse) + ".")
    if tied:
        lines.append("Within the seed-to-seed spread: " + "; ".join(tied) + ".")
    if len(better) <= len(worse) or len(better) < n / 2:
        lines.append(
            "So at this budget DAGMaN does not clearly beat SMIT. What we think would change it: pretraining long "
            "enough for the teacher's SATT to become informative (the papers: 800 epochs on 10,412 CTs; here a few "
            "epochs on a few dozen volumes, so attention-guided masking mostly follows an untrained attention map), "
            "128^3 crops (more SA tokens to rank), feature size 48, and evaluation sets of hundreds of real cases "
            "instead of tens of phantom nodules, where an AUC difference of a few hundredths is measurable."
        )
    return lines


def _context(summary: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, Sequence[float]]) -> list[str]:
    """Sentences that say what the comparison can show: how far pretraining moved the encoders, and how the
    zero-shot maps compare with the trivial baselines on the same views."""
    lines = []
    drift = {v: m["encoder_drift"]["mean"] for v, m in summary.items()
             if v not in UNTRAINED and m.get("encoder_drift", {}).get("mean") is not None}
    if drift:
        low, high = min(drift, key=drift.get), max(drift, key=drift.get)
        line = (f"Pretraining moved the encoder weights by {100 * drift[low]:.1f} % ({low}) to {100 * drift[high]:.1f} % "
                f"({high}) of their norm (relative L2 change from the initial weights, mean over seeds).")
        if drift[high] < 0.1:
            line += (" Every encoder evaluated here is therefore close to its random initialisation, and the seed "
                     "sets the initialisation: differences between variants measure the architecture (SA module or "
                     "not, SA stage) and the seed more than what pretraining learnt.")
        lines.append(line)
    for metric_key, prefix, views in (("loc_dice", "full_", "whole volumes"), ("loc_dice_crop", "crop_", "off-centre crops")):
        maps = {v: m[metric_key]["mean"] for v, m in summary.items() if m.get(metric_key, {}).get("mean") is not None}
        trivial = {k: float(np.mean(v)) for k, v in baselines.items() if k.startswith(prefix) and not k.endswith("noise")}
        if maps and trivial:
            best_variant, best_baseline = max(maps, key=maps.get), max(trivial, key=trivial.get)
            verb = "beats" if maps[best_variant] > trivial[best_baseline] else "does not reach"
            lines.append(f"Zero-shot localization on {views}: the best SATT map ({best_variant}, Dice "
                         f"{maps[best_variant]:.3f}) {verb} the best trivial map ({best_baseline}, Dice "
                         f"{trivial[best_baseline]:.3f}).")
    return lines


def _pretraining_effect(records: Sequence[Mapping[str, Any]],
                        summary: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """The control group's table (header, rows) and sentences: each pretrained variant against its untrained
    control (same architecture, same initial weights), metric by metric, paired by seed."""
    pairs = [(base, name) for name, base in UNTRAINED.items() if name in summary and base in summary]
    header = ["metric"]
    for base, name in pairs:
        header += [base, name, f"{base}: pretrained - untrained, per seed"]
    rows, lines = [], []
    counts = {base: {"better": [], "worse": [], "mixed": []} for base, _ in pairs}
    seeds = {base: 0 for base, _ in pairs}
    for metric in _metrics_of(summary, [v for pair in pairs for v in pair], every=True):
        row = [metric.label]
        for base, name in pairs:
            diffs = paired_differences(records, base, name, metric.key)
            seeds[base] = max(seeds[base], len(diffs))
            row += [format_mean_std(summary[base].get(metric.key)), format_mean_std(summary[name].get(metric.key)),
                    " / ".join(f"{d:+.3f}" for d in diffs) or "-"]
            # distances follow the feature scale, which pretraining changes: not counted, their ratio is below
            if metric.higher_is_better is None or len(diffs) < 2 or not metric.scale_free:
                continue
            signed = [d if metric.higher_is_better else -d for d in diffs]
            kind = "better" if min(signed) > 0 else "worse" if max(signed) < 0 else "mixed"
            counts[base][kind].append(metric.label)
        rows.append(row)
    for base, name in pairs:
        c = counts[base]
        n = sum(map(len, c.values()))
        if not n:
            continue
        chance = 2 * 0.5 ** seeds[base]
        lines.append(f"{base} pretrained vs the same encoder untrained ({name}): of {n} scale-free metrics, "
                     f"pretraining improved {len(c['better'])} on every seed, worsened {len(c['worse'])} on every "
                     f"seed, and moved {len(c['mixed'])} in different directions on different seeds. A metric that "
                     f"pretraining does not change falls on the same side on all {seeds[base]} seeds with probability "
                     f"{chance:.2f}, so chance alone puts about {chance * n:.0f} of {n} in the first two counts.")
        if c["better"]:
            lines.append(f"{base}, improved on every seed: " + "; ".join(c["better"]) + ".")
        if c["worse"]:
            lines.append(f"{base}, worsened on every seed: " + "; ".join(c["worse"]) + ".")
        scale = [summary[base][k]["mean"] / summary[name][k]["mean"] for k in ("organs_phantom_intra", "organs_real_intra")
                 if summary[base].get(k, {}).get("mean") and summary[name].get(k, {}).get("mean")]
        if scale:
            lines.append(f"{base}: pretraining scaled the organ-crop feature distances to "
                         + " and ".join(f"{r:.2f}x" for r in scale) + " of the untrained encoder's (intra-cluster, "
                         "phantom and real CT): the feature scale changed, so intra- and inter-cluster distances are "
                         "left out of the counts above; their ratio and kNN accuracy are in them.")
    return header, rows, lines


def _group_rows(group: str, summary: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(row label, variant) of a group's table: sweep rows labelled by the swept value."""
    rows = []
    for variant in GROUPS[group]:
        if variant not in summary:
            continue
        if group in _SWEEP_KEYS:
            key, default = _SWEEP_KEYS[group]
            label = f"{key} = {variant_setting(variant, key, default)} ({variant})"
        else:
            label = variant
        rows.append((label, variant))
    return rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def plot_group(group: str, summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Bar chart (mean +- std over seeds) of every metric measured for a group's variants."""
    from matplotlib.figure import Figure

    rows = _group_rows(group, summary)
    # a sweep compares its points on the tasks they all ran (budget.sweep_tasks)
    metrics = _metrics_of(summary, [v for _, v in rows], every=group != "core")
    if not rows or not metrics:
        return None
    columns = min(4, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * lines), constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False)).reshape(-1)
    for ax, metric in zip(axes, metrics):
        names, means, stds, colours = [], [], [], []
        for i, (label, variant) in enumerate(rows):
            entry = summary[variant].get(metric.key)
            if entry and entry["mean"] is not None:
                names.append(variant if group not in _SWEEP_KEYS else label.split(" (")[0].split("= ")[1])
                means.append(entry["mean"])
                stds.append(entry["std"] or 0.0)
                colours.append(f"C{i}")  # one colour per variant in every panel
        ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric.label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    if group in _SWEEP_KEYS:
        fig.suptitle(f"{_SWEEP_KEYS[group][0]} sweep (mean +- std over seeds)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _copy_figures(records: Sequence[Mapping[str, Any]], paths: Paths, output_dir: Path,
                  budget: AblationBudget) -> dict[str, list[Path]]:
    """UMAP plots (seed 0 of each core variant), the head-diversity comparison and localization overlays."""
    figures: dict[str, list[Path]] = {"umap": [], "head_diversity": [], "localization": []}
    seed0 = {(r["variant"], r["task"]): r for r in records if r.get("seed") == 0}
    for variant in GROUPS["core"]:
        for prefix in ("organs_phantom", "organs_real"):
            record = seed0.get((variant, prefix))
            if record and record.get("files", {}).get("umap_png"):
                target = output_dir / f"ablation_umap_{prefix.split('_')[1]}_{slug(variant)}.png"
                shutil.copyfile(record["files"]["umap_png"], target)
                figures["umap"].append(target)
        record = seed0.get((variant, "localization"))
        overlay = paths.unit(variant, 0) / "localization" / "localization.png"
        if record and overlay.is_file():
            target = output_dir / f"ablation_localization_{slug(variant)}.png"
            shutil.copyfile(overlay, target)
            figures["localization"].append(target)
    diversity = {v: json.loads(Path(seed0[(v, "head_diversity")]["files"]["json"]).read_text())
                 for v in GROUPS["core"] if (v, "head_diversity") in seed0}
    if diversity:
        from dagman_components.analysis import plot_head_diversity

        figures["head_diversity"].append(plot_head_diversity(diversity, output_dir / "ablation_head_diversity.png"))
    return figures


def write_report(
    records: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    budget: AblationBudget,
    work_dir: str | os.PathLike,
    real_data: str | os.PathLike | None,
    command: str,
    wall_s: float,
    skipped: Mapping[str, str] | None = None,
    groups: Sequence[str] = DEFAULT_GROUPS,
) -> dict[str, Path]:
    """Write ``ablation.md``, ``ablation.csv``, ``ablation.json`` and the plots into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = Paths(Path(work_dir).resolve(), Path(real_data).resolve() if real_data and Path(real_data).is_dir() else None)
    summary = aggregate(records)
    info = hardware()
    timing: dict[str, list[float]] = {}
    for record in records:
        timing.setdefault(record["task"], []).append(float(record.get("wall_s", 0.0)))
    pretrain_records = [r for r in records if r["task"] == "pretrain"]
    iterations = sorted({r["metrics"]["iterations"] for r in pretrain_records if r["variant"] not in UNTRAINED})

    # CSV: one row per (variant, metric)
    csv_path = output_dir / "ablation.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "metric", "task", "mean", "std", "n", "values", "paper_theirs"])
        for variant, metrics in summary.items():
            for key, entry in metrics.items():
                metric = next((m for m in METRICS if m.key == key), None)
                writer.writerow([variant, key, metric.task if metric else "", entry["mean"], entry["std"], entry["n"],
                                 " ".join(f"{v:.6g}" for v in entry["values"]),
                                 metric.paper.get(variant, "") if metric else ""])

    figures = {f"group_{g}": plot_group(g, summary, output_dir / f"ablation_{g}.png") for g in groups}
    figures.update({k: v for k, v in _copy_figures(records, paths, output_dir, budget).items()})

    baselines: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.get("baselines", {}).items():
            baselines.setdefault(key, []).append(value)

    md = ["# Ablation: attention-guided masking and noisy teacher vs random masking", "",
          "Written by `python -m dagman_components.experiments ablation`; every number below comes from that run.", "",
          "## How it was run", "", f"- command: `{command}`",
          f"- wall time of the suite: {sum(map(sum, timing.values())) / 60:.1f} min, the sum of every unit's own wall "
          "time (each is cached with its result, so the sum survives `--resume`): "
          + ", ".join(f"{k} {sum(v) / 60:.1f} min" for k, v in timing.items())
          + f"; this invocation took {wall_s / 60:.1f} min (under `--resume` it computes only the missing units)",
          f"- hardware: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
          f"device {info['device']}{' (' + info['gpu'] + ')' if info['gpu'] else ''}; torch {info['torch']}, "
          f"MONAI {info['monai']}, Python {info['python']}",
          f"- pretraining: `bundles/pretrain/configs/train.yaml` with the variant's overrides; "
          f"{', '.join(map(str, iterations))} iterations per run (equal for every variant"
          + ("; the untrained controls: none" if any(r["variant"] in UNTRAINED for r in pretrain_records) else "")
          + "), "
          f"{budget.roi_size}^3 crops, batch {budget.batch_size}, feature size {budget.feature_size}; data: "
          f"{budget.pretrain_phantoms} synthetic phantoms (seed 0)"
          + (f" + the real CTs of `{paths.real_data}` (all CT images, masks excluded)"
             if budget.use_real_pretraining and paths.real_data else " only"),
          f"- evaluation phantoms: seed {budget.eval_phantom_seed} (none of them seen in pretraining); split seed "
          f"{budget.split_seed}; fixed for every variant and seed", "",
          "Budget (`dagman_components.experiments.AblationBudget`, fingerprint "
          f"`{budget.fingerprint()}`):", ""]
    md += _markdown_table(["field", "value"], [[k, str(v)] for k, v in asdict(budget).items()])
    md += ["", "Variants (pretrain-bundle overrides; empty = the bundle's DAGMaN defaults):", ""]
    md += _markdown_table(["variant", "overrides"],
                          [[v, f"{UNTRAINED[v]}'s architecture and initial weights (same seed), not pretrained"
                            if v in UNTRAINED else
                            ", ".join(f"`{k}={val}`" for k, val in VARIANTS[v].items()) or "(defaults)"]
                           for v in VARIANTS if v in summary])
    if skipped:
        md += ["", "Not run:", ""] + [f"- `{task}`: {why}" for task, why in skipped.items()]
    if "core" in groups:
        core = [v for v in GROUPS["core"] if v in summary]
        md += ["", "## Core variants (mean +- std over seeds)", ""]
        rows = [[m.label] + [format_mean_std(summary[v].get(m.key)) for v in core] + [_paper_text(m)]
                for m in _metrics_of(summary, core)]
        md += _markdown_table(["metric"] + core + [PAPER_COLUMN], rows)
        md += ["", "The paper column holds the papers' own numbers on their data (LIDC-IDRI nodules, OrganMNIST3D, "
               "SMART's tumours), not a reproduction: our rows are synthetic phantoms and a handful of real CTs, "
               "with a small encoder pretrained briefly. Distances depend on the feature scale of each encoder; "
               "kNN accuracy and inter/intra do not. Variants without the SA module (SMIT, NT only) have no SATT "
               "map, hence no zero-shot localization Dice; their frozen feature is the pooled last stage, the "
               "others' the [CLS] token (papers' protocol; the pooled-feature probe row compares all on one footing).",
               ""]
        if baselines:
            md += ["Zero-shot localization baselines on the same views (independent of the encoder):", ""]
            md += _markdown_table(["map", "Dice"], [[k, f"{np.mean(v):.3f}"] for k, v in sorted(baselines.items())])
            md += [""]
        md += ["What the numbers show:", ""] + [f"- {line}" for line in _verdict(summary) + _context(summary, baselines)]
    if "control" in groups:
        header, rows, lines = _pretraining_effect(records, summary)
        if rows:
            md += ["", "## Pretrained vs untrained: what pretraining itself changed", "",
                   "Each untrained control is built by its variant's pretrain workflow with the same seed and saved "
                   "before the first iteration, so it holds exactly the weights the pretrained encoder started from; "
                   "the per-seed column is pretrained minus untrained for seeds 0, 1, ... in order.", ""]
            md += _markdown_table(header, rows)
            md += [""] + [f"- {line}" for line in lines]
    for group, title in (("loss", "Loss ablation"), ("pdr", "Teacher patch-drop ratio (PDR) sweep"),
                         ("sa_stage", "SA stage sweep")):
        if group not in groups:
            continue
        rows_g = _group_rows(group, summary)
        metrics = _metrics_of(summary, [v for _, v in rows_g], every=True)
        md += ["", f"## {title} (mean +- std over seeds)", ""]
        md += _markdown_table(["variant"] + [m.label for m in metrics],
                              [[label] + [format_mean_std(summary[v].get(m.key)) for m in metrics]
                               for label, v in rows_g])
    head_keys = sorted({k for v in summary.values() for k in v if k.startswith("hd_") and "_entropy_" in k})
    if head_keys:
        core = [v for v in GROUPS["core"] if v in summary]
        md += ["", "## Attention head diversity per stage (entropy of attention distances, nats)", ""]
        md += _markdown_table(["statistic"] + core, [[k] + [format_mean_std(summary[v].get(k)) for v in core]
                                                     for k in head_keys])
    md += ["", "## Plots", ""]
    for name, value in figures.items():
        for figure in value if isinstance(value, list) else [value]:
            if figure is not None:
                md.append(f"![{name}]({Path(figure).name})")
    md += ["", "Files: `ablation.csv` (one row per variant and metric, with every seed's value) and `ablation.json` "
           "(the same plus every unit's record).", ""]
    md_path = output_dir / "ablation.md"
    md_path.write_text("\n".join(md) + "\n")
    json_path = output_dir / "ablation.json"
    write_result(json_path, {"command": command, "wall_s": wall_s, "hardware": info, "budget": asdict(budget),
                             "budget_fingerprint": budget.fingerprint(), "skipped": dict(skipped or {}),
                             "summary": summary, "records": list(records)})
    return {"markdown": md_path, "csv": csv_path, "json": json_path}


# ---- command line -------------------------------------------------------------------------------------------------


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
    groups = _as_list(only) or (["core"] if quick else list(DEFAULT_GROUPS))
    task_list = _as_list(tasks) or list(TASKS)
    output = Path(output_dir)
    work = Path(work_dir) if work_dir else default_work_dir(quick)
    command = "python -m dagman_components.experiments " + " ".join(sys.argv[1:] if sys.argv[1:] else ["ablation"])
    start = time.perf_counter()
    result = run_ablation(work, budget, groups=groups, tasks=task_list, real_data=real_data, resume=resume)
    files = write_report(result["records"], output, budget, work, real_data, command,
                         time.perf_counter() - start, skipped=result["skipped"], groups=groups)
    logger.info(f"report written to {files['markdown']}")
    return files


def budget_with(budget: AblationBudget, **fields: Any) -> AblationBudget:
    """``budget`` with some fields replaced, each cast to the type of the field's default.

    Raises:
        TypeError: a name that is not a field of :py:class:`AblationBudget` (the message lists the fields).
    """
    known = {f.name: f for f in dataclasses.fields(AblationBudget)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise TypeError(f"unknown ablation option(s) {unknown}; budget fields: {sorted(known)}")
    cast: dict[str, Any] = {}
    for name, value in fields.items():
        default = getattr(AblationBudget(), name)
        if isinstance(default, bool):
            from dagman_components.bundle_utils import as_bool

            cast[name] = as_bool(value, name)
        elif isinstance(default, tuple):
            cast[name] = tuple(_as_list(value))
        elif isinstance(default, (int, float)) and value is not None:
            cast[name] = type(default)(value)
        else:
            cast[name] = None if value in (None, "None", "none") else int(value)
    return replace(budget, **cast)


def default_work_dir(quick: bool = False) -> Path:
    """``$XDG_CACHE_HOME/dagman_components/ablation[_quick]`` (``~/.cache`` without XDG_CACHE_HOME)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dagman_components" / ("ablation_quick" if quick else "ablation")


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]

