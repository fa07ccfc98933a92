"""The ablation's variants (pretrain-bundle overrides, as data), their groups, and the fixed budget."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dagman_components.options import as_bool

__all__ = ["BUNDLES_DIR", "DEFAULT_BUDGET", "DEFAULT_GROUPS", "DEFAULT_REAL_DATA", "FULL_GROUPS", "GROUPS", "QUICK_BUDGET", "REPO_ROOT", "SWEEP_KEYS", "UNTRAINED", "VARIANTS", "AblationBudget", "as_list", "budget_with", "encoder_arguments", "papers_feature", "pretrain_overrides", "slug", "variant_setting"]


REPO_ROOT = Path(__file__).resolve().parents[3]


BUNDLES_DIR = REPO_ROOT / "bundles"


#: the real CTs next to the project (``../shared/data/real`` seen from the repository root)
DEFAULT_REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


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
SWEEP_KEYS = {"pdr": ("teacher_drop_ratio", 0.7), "sa_stage": ("sa_stage", 3)}


def variant_setting(variant: str, key: str, default: Any) -> Any:
    """The value of pretrain-config ``key`` in ``variant`` (``default``: the bundle's value)."""
    return VARIANTS[variant].get(key, default)


def slug(name: str) -> str:
    """A file-system name for a variant: ``"DAGMaN w/o AMPD"`` -> ``"dagman_wo_ampd"``."""
    return "".join(c if c.isalnum() else "_" for c in name.lower().replace("w/o", "wo")).strip("_").replace("__", "_")


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
            cast[name] = as_bool(value, name)
        elif isinstance(default, tuple):
            cast[name] = tuple(as_list(value))
        elif isinstance(default, (int, float)) and value is not None:
            cast[name] = type(default)(value)
        else:
            cast[name] = None if value in (None, "None", "none") else int(value)
    return replace(budget, **cast)


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]
