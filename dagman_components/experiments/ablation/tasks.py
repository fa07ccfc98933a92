"""The evaluations run on every pretrained encoder: one function per task, ``TASK_FUNCTIONS`` by name."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import Paths, write_result
from .pretraining import bundle_workflow, load_encoder
from .variants import BUNDLES_DIR, AblationBudget, encoder_arguments, papers_feature, variant_setting

__all__ = ["PHANTOM_TASKS", "REAL_TASKS", "TASK_FUNCTIONS", "TASKS", "linear_probe_auc", "segmentation_split", "task_head_diversity", "task_localization", "task_nodule_ft", "task_nodule_lp", "task_organs_phantom", "task_organs_real", "task_segmentation"]


PHANTOM_TASKS: tuple[str, ...] = ("nodule_lp", "nodule_ft", "organs_phantom", "head_diversity")


REAL_TASKS: tuple[str, ...] = ("organs_real", "localization", "segmentation")


#: every task, in the order they run for one encoder
TASKS: tuple[str, ...] = PHANTOM_TASKS + REAL_TASKS


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
            workflow = bundle_workflow(config, overrides)
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
    workflow = bundle_workflow(BUNDLES_DIR / "segmentation" / "configs" / "train.yaml", overrides)
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
