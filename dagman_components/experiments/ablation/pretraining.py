"""Pretraining one (variant, seed) through the pretrain bundle, and how far it moved the encoder."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .cache import Paths, write_result
from .variants import BUNDLES_DIR, UNTRAINED, VARIANTS, AblationBudget, encoder_arguments, pretrain_overrides

__all__ = ["bundle_workflow", "encoder_drift", "initial_encoder_state", "load_encoder", "pretrain", "pretraining_datalist", "relative_change"]


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


def load_encoder(variant: str, seed: int, paths: Paths, budget: AblationBudget):
    """The pretrained encoder of (variant, seed), in eval mode on the CPU."""
    from dagman_components.networks import SASwinEncoder

    return SASwinEncoder.from_pretrained(paths.encoder(variant, seed), **encoder_arguments(variant, budget)).eval()


def bundle_workflow(config_file: Path, overrides: Mapping[str, Any]):
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
    workflow = bundle_workflow(BUNDLES_DIR / "pretrain" / "configs" / "train.yaml", overrides)
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
