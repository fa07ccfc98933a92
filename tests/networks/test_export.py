"""Pretrained Swin weights into MONAI's SwinUNETR: the exported file loads with no missing/unexpected keys."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from dagman_components.networks import SASwinEncoder
from dagman_components.networks.export import _main, export_swin_unetr_weights, swin_unetr_arguments


@pytest.mark.parametrize("sa_inline", [True, False])
def test_exported_weights_load_into_swin_unetr(tmp_path, sa_inline):
    torch.manual_seed(0)
    encoder = SASwinEncoder(feature_size=12, sa_inline=sa_inline).eval()
    encoder_file = tmp_path / "model.pt"
    torch.save({"model": encoder.state_dict()}, encoder_file)  # wrapped, as some trainers save it
    arguments = export_swin_unetr_weights(encoder_file, tmp_path / "swin.pt")
    assert arguments["feature_size"] == 12 and arguments["depths"] == (2, 2, 8, 2)
    assert arguments["num_heads"] == (4, 4, 8, 16) and arguments["window_size"] == 4 and arguments["patch_norm"]

    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16),
                      window_size=4, patch_norm=True).eval()
    result = model.load_state_dict(torch.load(tmp_path / "swin.pt"), strict=False)
    assert not [k for k in result.missing_keys if k.startswith("swinViT.")]
    assert result.unexpected_keys == []

    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        theirs = model.swinViT(x, normalize=True)
        ours = encoder.swinViT(x, normalize=True)
        hidden = encoder(x).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours))
    # x0..x2 are SwinUNETR's; inline SA tokens replace x3 and feed stage 4, a side-branch SA changes nothing
    # (within the float rounding of the fast forward's fused attention kernel)
    same = 5 if not sa_inline else 3
    assert all(torch.allclose(hidden[i], theirs[i], atol=1e-5) for i in range(same))
    if sa_inline:
        assert not torch.allclose(hidden[3], theirs[3], atol=1e-5)


def test_without_prefix_loads_into_swin_vit(tmp_path):
    torch.manual_seed(0)
    encoder_file = tmp_path / "model.pt"
    torch.save(SASwinEncoder(feature_size=24, num_heads=(3, 6, 12, 24)).state_dict(), encoder_file)
    _main(str(encoder_file), str(tmp_path / "swin.pt"), prefix="")  # what `python -m ...export` runs
    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=24, depths=(2, 2, 8, 2), num_heads=(3, 6, 12, 24),
                      window_size=4, patch_norm=True)
    model.swinViT.load_state_dict(torch.load(tmp_path / "swin.pt"), strict=True)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run bundles/pretrain first"):
        export_swin_unetr_weights(tmp_path / "absent.pt", tmp_path / "out.pt")
    with pytest.raises(ValueError, match=r"swinViT\.patch_embed\.proj\.weight"):
        swin_unetr_arguments({"swinViT.layers1.0.blocks.0.norm1.weight": torch.ones(3)})
