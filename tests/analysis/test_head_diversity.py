import json
import math

import pytest
import torch
from monai.networks.nets.swin_unetr import get_window_size, window_partition

from dagman_components.analysis.head_diversity import (
    SwinAttentionStatistics,
    attention_distance_and_entropy,
    compute_head_diversity,
    histogram_entropy,
    run_head_diversity,
    token_positions,
)
from dagman_components.networks import SASwinEncoder

SMALL = dict(feature_size=12, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), sa_depth=2)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SASwinEncoder(**SMALL).eval()


def test_uniform_attention_has_entropy_log_n_and_identity_distance_zero():
    positions = token_positions((2, 2, 2), (3.0, 3.0, 3.0))
    distances = torch.cdist(positions, positions)
    n = positions.shape[0]
    uniform = torch.full((1, 2, n, n), 1.0 / n)
    distance, entropy = attention_distance_and_entropy(uniform, distances)
    assert torch.allclose(entropy, torch.full_like(entropy, math.log(n)))
    assert torch.allclose(distance, distances.mean(dim=1).expand_as(distance))
    distance, entropy = attention_distance_and_entropy(torch.eye(n).expand(1, 2, n, n), distances)
    assert torch.all(distance == 0) and torch.all(entropy == 0)


def test_distance_is_attention_weighted_mm_distance():
    positions = token_positions((1, 1, 3), (1.0, 1.0, 2.5))  # three tokens 2.5 mm apart along z
    assert positions[:, 2].tolist() == [0.0, 2.5, 5.0]
    attention = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0], [0.25, 0.75, 0.0]])
    distance, _ = attention_distance_and_entropy(attention, torch.cdist(positions, positions))
    assert torch.allclose(distance, torch.tensor([2.5, 2.5, 0.25 * 5.0 + 0.75 * 2.5]))


def test_histogram_entropy():
    assert histogram_entropy(torch.tensor([5.0, 5.0, 5.0, 5.0])) == pytest.approx(math.log(4))
    assert histogram_entropy(torch.tensor([0.0, 7.0, 0.0])) == 0.0
    assert histogram_entropy(torch.zeros(3)) == 0.0


def test_hooks_capture_one_map_per_block_and_drop_padded_queries(encoder):
    # stage-4 grid (2, 2, 6): windows (2, 2, 4), the last axis padded by MONAI from 6 to 8 tokens
    with SwinAttentionStatistics(encoder) as stats, torch.no_grad():
        encoder(torch.rand(1, 1, 32, 32, 96))
        encoder(torch.rand(1, 1, 32, 32, 96))
    assert stats.maps_captured == 2 * (sum(SMALL["depths"]) + SMALL["sa_depth"])
    assert len(stats.layers) == sum(SMALL["depths"]) + SMALL["sa_depth"]
    summary = {entry["stage"]: entry for entry in stats.summary()["stages"]}
    assert summary[1]["num_queries_per_head"] == 2 * 16 * 16 * 48
    assert summary[4]["window"] == [2, 2, 4]
    assert summary[4]["num_queries_per_head"] == 2 * 2 * 2 * 6  # real tokens only
    assert summary["SA"]["num_queries_per_head"] == 2 * 2 * 2 * 6
    assert summary[3]["num_heads"] == SMALL["depths"][2] * SMALL["num_heads"][2]
    assert summary[1]["token_spacing_mm"] == [4.0, 4.0, 4.0]
    assert summary[4]["token_spacing_mm"] == [32.0, 32.0, 32.0]
    for entry in summary.values():
        assert 0 <= entry["attention_distance_mm"]["mean"] <= entry["max_distance_mm"]
        assert entry["distance_entropy"]["var"] >= 0
    # hooks are removed on exit
    with torch.no_grad():
        encoder(torch.rand(1, 1, 32, 32, 32))
    assert stats.maps_captured == 2 * (sum(SMALL["depths"]) + SMALL["sa_depth"])


def test_shifted_windows_only_attend_where_window_offsets_are_true_offsets(encoder):
    """What makes in-window positions exact: shifted-window attention is ~0 between tokens not adjacent in the image."""
    block = encoder.swinViT.layers1[0].blocks[1]
    captured = {}

    def grab_grid(module, args):
        captured["grid"] = tuple(args[0].shape[1:4])

    def grab_attention(module, args, output):
        captured["attention"] = output

    handles = [block.register_forward_pre_hook(grab_grid), block.attn.softmax.register_forward_hook(grab_attention)]
    with torch.no_grad():
        encoder(torch.rand(1, 1, 32, 32, 32))
    for handle in handles:
        handle.remove()
    grid = captured["grid"]
    window, shift = get_window_size(grid, block.window_size, block.shift_size)
    assert any(s > 0 for s in shift)
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), dim=-1).float()[None]
    coords = torch.roll(coords, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    true_coords = window_partition(coords, window)  # (nW, n, 3) image coordinates of each window's tokens
    in_window = token_positions(window, (1.0, 1.0, 1.0))
    true_offset = true_coords[:, :, None, :] - true_coords[:, None, :, :]
    window_offset = (in_window[:, None, :] - in_window[None, :, :])[None]
    mismatch = (true_offset != window_offset).any(dim=-1)  # (nW, n, n): pairs wrapped around by the roll
    assert mismatch.any()
    attention = captured["attention"].amax(dim=1)  # (nW, n, n), any head
    assert float(attention[mismatch].max()) < 1e-20


def test_changing_input_size_is_refused(encoder):
    with pytest.raises(ValueError, match="one input size"):
        compute_head_diversity(encoder, [torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 64, 64, 64)])


def test_run_writes_json_and_plot_and_compares(encoder, tmp_path):
    batches = [{"image": torch.rand(1, 1, 32, 32, 32)}]
    first = run_head_diversity(encoder, batches, tmp_path / "a", name="a", voxel_spacing=(1.0, 1.0, 2.0), bins=8)
    assert first["stages"][0]["token_spacing_mm"] == [2.0, 2.0, 4.0]
    written = json.loads((tmp_path / "a" / "head_diversity.json").read_text())
    assert [e["stage"] for e in written["stages"]] == [1, 2, 3, 4, "SA"]
    assert written["num_volumes"] == 1 and written["histogram_bins"] == 8
    run_head_diversity(encoder, batches, tmp_path / "b", name="b", compare_with={"a": tmp_path / "a" / "head_diversity.json"})
    assert (tmp_path / "b" / "head_diversity.png").stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="missing.json"):
        run_head_diversity(encoder, batches, tmp_path / "c", compare_with={"x": tmp_path / "missing.json"})


def test_without_semantic_attention_only_swin_stages(tmp_path):
    smit = SASwinEncoder(**SMALL, use_semantic_attention=False)
    result = compute_head_diversity(smit, [torch.rand(1, 1, 32, 32, 32)])
    assert [e["stage"] for e in result["stages"]] == [1, 2, 3, 4]
    assert result["maps_captured"] == sum(SMALL["depths"])
