from pathlib import Path

import pytest
import torch

from dagman_components.analysis.mask_overlap import mask_tumour_overlap
from dagman_components.analysis.probe import build_encoder

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.mark.skipif(not (REAL / "sts").is_dir(), reason="real STS data not present")
def test_mask_overlap_on_two_real_tumours():
    from dagman_components.analysis.localization import image_label_datalist

    torch.manual_seed(0)
    encoder, _ = build_encoder(None, {"depths": [1, 1, 1, 1]}, str(REPO / "bundles/pretrain/configs/train.yaml"))
    cases = image_label_datalist(REAL / "sts", image_glob="STS_00[12]/CT_image.nii.gz", label_replace=("CT_image", "CT_mask"))
    result = mask_tumour_overlap(encoder, cases, crops_per_case=1)
    assert result["settings"]["n_crops"] == 2
    summary = result["summary"]
    assert summary["mask_fraction"]["mean"] == pytest.approx(40 / 64)  # floor(0.7*64) - floor(0.07*64) tokens
    for key in ("tumour_masked_fraction_clean", "tumour_masked_fraction_noisy", "dropped_fraction_noisy", "mask_iou"):
        assert 0.0 <= summary[key]["mean"] <= 1.0, key


def test_mask_overlap_needs_semantic_attention():
    encoder, _ = build_encoder(None, {"use_semantic_attention": False, "depths": [1, 1, 1, 1]},
                               str(REPO / "bundles/pretrain/configs/train.yaml"))
    with pytest.raises(ValueError, match="semantic attention"):
        mask_tumour_overlap(encoder, [])
