import pytest
import torch

from dagman_components.engines import CoDistillationTrainer
from dagman_components.losses import DAGMaNLoss
from dagman_components.networks import DAGMaNPretrainModel, SASwinEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SASwinEncoder(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)).eval()


def test_premerge_tokens_are_the_stage_input_to_patch_merging_on_a_non_cubic_grid(encoder):
    x = torch.rand(2, 1, 32, 64, 96)
    seen = []
    handle = encoder.swinViT.layers3[0].downsample.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        out = encoder(x, return_premerge=True)
    handle.remove()
    assert out.grid_size == (2, 4, 6)
    premerge_map = seen[-1]  # (B, D, H, W, C) channels-last at stride 8
    assert premerge_map.shape == (2, 4, 8, 12, 48)  # 4F channels
    expected = torch.nn.functional.layer_norm(premerge_map, (48,)).reshape(2, 4 * 8 * 12, 48)
    assert torch.allclose(out.premerge_tokens, expected)
    assert encoder(x).premerge_tokens is None  # only when asked for


def test_ampd_premerge_mask_covers_the_eight_fine_tokens_of_each_masked_token(encoder):
    model = DAGMaNPretrainModel(encoder, DAGMaNLoss(out_dim=16), hidden_dim=16, bottleneck_dim=8, ampd_tokens="premerge")
    x = torch.rand(1, 1, 32, 64, 96)
    coarse = torch.zeros(1, 2 * 4 * 6, dtype=torch.bool)
    z, y, w = 1, 2, 5  # one asymmetric token position
    coarse[0, (z * 4 + y) * 6 + w] = True
    with torch.no_grad():
        encoded = model.encode(x, coarse)
        tokens, fine = model.patch_tokens(encoded, coarse)
    fine_grid = fine.reshape(4, 8, 12)
    expected = torch.zeros(4, 8, 12, dtype=torch.bool)
    expected[2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * w : 2 * w + 2] = True
    assert torch.equal(fine_grid, expected)
    assert tokens.shape == (1, 4 * 8 * 12, encoder.sa_dim // 2)
    heads = model.project(encoded, coarse, reconstruct=False)
    assert heads.patch_logits.shape == (8, 16) and heads.patch_image_index.tolist() == [0] * 8


@pytest.mark.parametrize("ampd_tokens", ["premerge", "stage", "sa"])
def test_ampd_token_choices_build_a_head_of_the_right_width(encoder, ampd_tokens):
    model = DAGMaNPretrainModel(encoder, DAGMaNLoss(out_dim=16), hidden_dim=16, bottleneck_dim=8, ampd_tokens=ampd_tokens)
    width = encoder.sa_dim // 2 if ampd_tokens == "premerge" else encoder.sa_dim
    assert model.patch_head.mlp[0].in_features == width
    with pytest.raises(ValueError, match="ampd_tokens"):
        DAGMaNPretrainModel(encoder, DAGMaNLoss(), ampd_tokens="merged")


@pytest.mark.parametrize("off", ["amip", "ampd", "aitd", "gitd"])
def test_a_loss_weight_is_the_one_switch_of_its_head(encoder, off):
    loss = DAGMaNLoss(out_dim=16, **{f"{off}_weight": 0.0})
    model = DAGMaNPretrainModel(encoder, loss, hidden_dim=16, bottleneck_dim=8)
    heads = {"amip": model.reconstruction_head, "ampd": model.patch_head, "aitd": model.cls_head,
             "gitd": model.global_head}
    assert {name for name, head in heads.items() if head is not None} == {"amip", "ampd", "aitd", "gitd"} - {off}
    assert model.loss_terms == tuple(t for t in ("amip", "ampd", "aitd", "gitd") if t != off)
    assert all(h.last_layer.weight.shape[0] == 16 for n, h in heads.items() if h is not None and n != "amip")
    # a head or a term on its own cannot be configured: the network takes no head flags ...
    with pytest.raises(TypeError):
        DAGMaNPretrainModel(encoder, loss, **{f"{off}_head": True})
    with pytest.raises(TypeError, match="loss must be the DAGMaNLoss"):
        DAGMaNPretrainModel(encoder, {f"{off}_weight": 0.0})
    # ... and a network built from one loss and trained with another is named at construction
    other = DAGMaNLoss(out_dim=16)
    with pytest.raises(ValueError, match=r"network has the heads of \[.*\] but the loss trains \['amip', 'ampd', 'aitd', 'gitd'\]"):
        other.check_model(model)
    data = [{"view_1": torch.rand(1, 1, 32, 32, 32), "view_2": torch.rand(1, 1, 32, 32, 32)}]
    with pytest.raises(ValueError, match="build the network from this loss"):
        CoDistillationTrainer("cpu", 1, data, model, torch.optim.SGD(model.parameters(), lr=0.1), other)
    with pytest.raises(ValueError, match="prototypes"):
        DAGMaNLoss(out_dim=32, **{f"{off}_weight": 0.0}).check_model(model)


def test_aitd_needs_the_sa_module():
    smit = SASwinEncoder(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), use_semantic_attention=False)
    with pytest.raises(ValueError, match="set aitd_weight 0"):
        DAGMaNPretrainModel(smit, DAGMaNLoss(out_dim=16))
    assert DAGMaNPretrainModel(smit, DAGMaNLoss(out_dim=16, aitd_weight=0.0)).cls_head is None
