"""Does the attention-guided mask follow the image? Mask/tumour overlap of the student's mask on real CT.

For crops that keep at least half of a tumour (``random_tumour_crops``), the teacher's SATT is taken
twice, from the clean view and from the patch-dropped view (the two ``satt_source`` choices of the
trainer); each gives the student's attention-guided mask (r = 0.7, s = 0.1). Reported per source:

- ``tumour_masked_fraction``: fraction of the crop's tumour voxels that the mask hides (a random mask of
  the same size hides ``mask_fraction`` of them on average, the chance level);
- ``tumour_auc``: ROC AUC of SATT for "token holds >= 50 % tumour" against the other tokens;
- ``dropped_fraction`` (noisy only): fraction of masked tokens the teacher had dropped (chance: the drop ratio);
- ``mask_iou``: IoU of the clean and the noisy mask (two random masks: about 0.45 at these ratios).

Run: ``python -m dagman_components.analysis.mask_overlap --encoder_path model.pt --data_dir ../shared/data/real``
(``--config_file`` takes the pretraining config(s) whose ``encoder_def`` builds the encoder, as the probe does).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from dagman_components.analysis.localization import (
    image_label_datalist,
    localization_preprocessing,
    random_tumour_crops,
)
from dagman_components.masking import attention_guided_mask, patch_dropout
from dagman_components.networks import SASwinEncoder

__all__ = ["main", "mask_tumour_overlap", "run_mask_overlap"]

logger = logging.getLogger(__name__)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    return float(roc_auc_score(positive, scores)) if 0 < positive.sum() < len(positive) else float("nan")


@torch.no_grad()
def mask_tumour_overlap(
    encoder: SASwinEncoder,
    cases: Sequence[Mapping[str, Any]],
    roi_size: int = 64,
    crops_per_case: int = 4,
    mask_ratio: float = 0.7,
    hint_ratio: float = 0.1,
    drop_ratio: float = 0.7,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    seed: int = 0,
) -> dict[str, Any]:
    """Overlap of the clean- and noisy-SATT masks with the tumour, over ``crops_per_case`` crops per case.

    Args:
        encoder: an SA encoder (eval mode is set here).
        cases: ``{"image", "label", "case"}`` dicts (see :func:`image_label_datalist`).
        roi_size: crop edge in voxels (64, the pretraining crop).

    Returns:
        ``{"summary": {metric: {"mean", "std"}}, "crops": [per-crop values], "settings": {...}}``.
    """
    if encoder.semantic_attention is None:
        raise ValueError("the mask/tumour overlap needs an encoder with semantic attention (use_semantic_attention=True).")
    encoder.eval()
    device = next(encoder.parameters()).device
    preprocess = localization_preprocessing(spacing, hu_range)
    generator = torch.Generator().manual_seed(seed)
    stride = encoder.token_stride
    rows = []
    for index, case in enumerate(cases):
        data = preprocess({"image": case["image"], "label": case["label"]})
        image, tumour = data["image"][0], data["label"][0] > 0.5
        pad = [max(0, roi_size - s) for s in image.shape]
        if any(pad):
            widths = [w for p in reversed(pad) for w in (p // 2, p - p // 2)]
            image, tumour = F.pad(image, widths), F.pad(tumour.float(), widths) > 0.5
        for start in random_tumour_crops(tumour, (roi_size,) * 3, crops_per_case, seed=seed + index):
            box = tuple(slice(s, s + roi_size) for s in start)
            x = image[box][None, None].to(device)
            tumour_tokens = F.avg_pool3d(tumour[box][None, None].float(), stride).flatten().numpy()
            if tumour_tokens.sum() == 0:
                continue
            n_tokens = tumour_tokens.size
            clean = encoder(x).satt
            dropped = patch_dropout(1, n_tokens, drop_ratio, generator)
            noisy = encoder(x, dropped.to(device)).satt
            masks = {
                name: attention_guided_mask(satt.cpu(), mask_ratio, hint_ratio, generator=generator)[0].numpy()
                for name, satt in (("clean", clean), ("noisy", noisy))
            }
            row = {"case": case.get("case", str(index)), "start": list(start), "mask_fraction": float(masks["clean"].mean())}
            for name, satt in (("clean", clean), ("noisy", noisy)):
                row[f"tumour_masked_fraction_{name}"] = float((masks[name] * tumour_tokens).sum() / tumour_tokens.sum())
                row[f"tumour_auc_{name}"] = _auc(satt[0].cpu().numpy(), tumour_tokens >= 0.5)
            row["dropped_fraction_noisy"] = float(dropped[0].numpy()[masks["noisy"]].mean())
            union = np.logical_or(masks["clean"], masks["noisy"]).sum()
            row["mask_iou"] = float(np.logical_and(masks["clean"], masks["noisy"]).sum() / max(union, 1))
            rows.append(row)
    if not rows:
        raise ValueError("no crop with tumour voxels: check the masks of the cases.")
    metrics = [k for k in rows[0] if k not in ("case", "start")]
    summary = {
        k: {"mean": float(np.nanmean([r[k] for r in rows])), "std": float(np.nanstd([r[k] for r in rows]))} for k in metrics
    }
    settings = {"roi_size": roi_size, "crops_per_case": crops_per_case, "mask_ratio": mask_ratio, "hint_ratio": hint_ratio,
                "drop_ratio": drop_ratio, "seed": seed, "n_crops": len(rows), "n_cases": len({r["case"] for r in rows})}
    return {"summary": summary, "crops": rows, "settings": settings}


def run_mask_overlap(
    data_dir: str = "../shared/data/real",
    encoder_path: str | None = None,
    config_file: str | Sequence[str] = "bundles/pretrain/configs/train.yaml",
    output: str | None = None,
    roi_size: int = 64,
    crops_per_case: int = 4,
    seed: int = 0,
    **encoder_overrides: Any,
) -> dict[str, Any]:
    """CLI: STS cases (``sts/*/CT_image.nii.gz`` + ``CT_mask.nii.gz``) under ``data_dir``; JSON to ``output``.

    Without ``encoder_path`` the encoder is the config's random initialisation at ``seed``.
    """
    from dagman_components.analysis.probe import build_encoder

    torch.manual_seed(seed)
    encoder, _ = build_encoder(encoder_path, encoder_overrides, config_file)
    cases = image_label_datalist(Path(data_dir) / "sts", image_glob="*/CT_image.nii.gz", label_replace=("CT_image", "CT_mask"))
    result = mask_tumour_overlap(encoder, cases, roi_size=roi_size, crops_per_case=crops_per_case, seed=seed)
    result["settings"].update(encoder_path=encoder_path, config_file=config_file, data_dir=str(data_dir))
    for key, value in result["summary"].items():
        print(f"{key:<32} {value['mean']:.3f} +- {value['std']:.3f}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2))
    return result


def main(**kwargs: Any) -> None:
    """Command-line entry: :func:`run_mask_overlap` without echoing its result."""
    run_mask_overlap(**kwargs)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
