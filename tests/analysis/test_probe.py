"""Frozen-feature probe (tumour linear probe, organ kNN) and its Ignite handler, on tiny synthetic NIfTI data."""

import dataclasses
import json
import logging
import re
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine

from dagman_components.analysis import ProbeHandler
from dagman_components.analysis.probe import (
    DEFAULT_ENCODER_KWARGS,
    INTENSITY_STATISTICS,
    LOCATION_FEATURES,
    PER_BLOCK_POSITION,
    block_features,
    build_encoder,
    encoder_kwargs_from_config,
    encoder_kwargs_from_encoder,
    grouped_folds,
    label_organ_blocks,
    label_tumour_blocks,
    linear_probe,
    main,
    organ_knn,
    prepare_probe_data,
    preprocessing_from_config,
    probe_baselines,
    reference_scores,
    run_probe,
    tile_identity_knn,
    tile_position_probe,
)
from dagman_components.analysis.probe.blocks import block_location
from dagman_components.networks import SASwinEncoder, encoder_args_with_defaults, save_encoder

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"
TINY = {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS, 2 mm: preprocessing leaves the grid as it is
SHAPE = (64, 64, 64)
NUM_CASES = 5
# every case: body below z = 52 (air above), one 32 x 32 x 16 tumour box aligned to the 16^3 blocks
TUMOUR_STARTS = [(16, 16, 16), (0, 32, 0), (32, 0, 16), (16, 32, 32), (32, 32, 0)]
TUMOUR_BLOCKS_PER_CASE = 4
# 4 x 4 x 3 blocks below z = 48 are >= half body; z 48..52 is 4/16 body: left out
TISSUE_BLOCKS_PER_CASE = 4 * 4 * 3 - TUMOUR_BLOCKS_PER_CASE


def _save(array, path, dtype=np.int16, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))


def write_case(root, name, tumour_start, rng, tumour_size=(32, 32, 16), shape=SHAPE):
    hu = -100.0 + 20.0 * rng.standard_normal(shape)  # fat
    hu[:, :, 52:] = -1000.0  # air above the body
    mask = np.zeros(shape, dtype=np.uint8)
    box = tuple(slice(s, s + n) for s, n in zip(tumour_start, tumour_size))
    mask[box] = 1
    hu[box] = 200.0 + 20.0 * rng.standard_normal(mask[box].shape)  # bright tumour
    _save(hu, root / "sts" / name / "CT_image.nii.gz")
    _save(mask, root / "sts" / name / "CT_mask.nii.gz", np.uint8)


def write_organs(root, rng, name="example"):
    """Slabs of organs 1, 2 and 5 (16 blocks each) and organ 7 on 2 blocks only (fewer than min_blocks 5)."""
    ids = np.zeros(SHAPE, dtype=np.uint8)
    hu = -50.0 + 10.0 * rng.standard_normal(SHAPE)
    for slab, (organ, value) in enumerate([(1, 40.0), (2, 300.0), (5, -150.0)]):
        ids[slab * 16 : (slab + 1) * 16] = organ
        hu[slab * 16 : (slab + 1) * 16] = value + 10.0 * rng.standard_normal((16, 64, 64))
    ids[48:64, 0:32, 0:16] = 7
    _save(hu, root / "organs" / f"{name}_ct.nii.gz")
    _save(ids, root / "organs" / f"{name}_seg.nii.gz", np.uint8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_data")
    rng = np.random.default_rng(0)
    for i, start in enumerate(TUMOUR_STARTS[:NUM_CASES]):
        write_case(root, f"STS_{i + 1:03d}", start, rng)
    write_organs(root, rng)
    return root


@pytest.fixture(scope="module")
def probe_data(data_root):
    # the grid tiling reads each synthetic case as one tile (the per-block tiling reads 48-60 tiles a case)
    return prepare_probe_data(data_root, tiling="grid")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(123)
    encoder = SASwinEncoder(**TINY)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(encoder.state_dict(), path)
    return path


def fill(volume, region, flat, value):
    """Set the ``flat`` slice of the row-major voxels of ``volume[region]`` to ``value``."""
    sub = volume[region].clone()
    sub.view(-1)[flat] = value
    volume[region] = sub


def test_block_labelling_thresholds():
    # 2 x 2 x 1 blocks of 4^3 = 64 voxels
    tumour = torch.zeros(8, 8, 4, dtype=torch.bool)
    body = torch.ones(8, 8, 4, dtype=torch.bool)
    fill(tumour, np.s_[0:4, 0:4], np.s_[:32], True)  # block (0, 0): exactly half tumour -> tumour
    fill(tumour, np.s_[4:8, 0:4], np.s_[:31], True)  # block (1, 0): 31/64 tumour -> border, left out
    fill(body, np.s_[0:4, 4:8], np.s_[32:], False)  # block (0, 1): no tumour, exactly half body -> tissue
    fill(body, np.s_[4:8, 4:8], np.s_[31:], False)  # block (1, 1): 31/64 body -> air, left out
    labels = label_tumour_blocks(tumour, body, block_size=4)
    assert labels[:, :, 0].tolist() == [[1, 0], [-1, -1]]
    # a single tumour voxel disqualifies a block from "tissue"
    fill(tumour, np.s_[0:4, 4:8], np.s_[0], True)
    assert int(label_tumour_blocks(tumour, body, block_size=4)[0, 1, 0]) == -1
    # stricter thresholds move the exact-half blocks out
    assert label_tumour_blocks(tumour, body, 4, tumour_fraction=0.6, body_fraction=0.6)[:, :, 0].tolist() == [
        [-1, -1], [-1, -1]]

    ids = torch.zeros(8, 8, 4, dtype=torch.int64)
    fill(ids, np.s_[0:4, 0:4], np.s_[:40], 3)  # 40/64 organ 3 -> 3
    fill(ids, np.s_[4:8, 0:4], np.s_[:31], 5)  # 31/64 organ 5, rest background -> left out
    ids[0:4, 4:8] = 0  # background is never a class
    fill(ids, np.s_[4:8, 4:8], np.s_[:32], 2)  # exactly half organ 2 -> 2
    fill(ids, np.s_[4:8, 4:8], np.s_[32:], 4)
    organ = label_organ_blocks(ids, block_size=4)
    assert organ[:, :, 0].tolist()[0] == [3, -1] and int(organ[1, 0, 0]) == -1
    assert int(organ[1, 1, 0]) in (2, 4)  # a tie at exactly half: either organ fills half the block
    with pytest.raises(ValueError, match="multiples of the block size"):
        label_tumour_blocks(torch.zeros(6, 8, 4, dtype=torch.bool), torch.zeros(6, 8, 4, dtype=torch.bool), 4)


def test_prepared_blocks_match_the_synthetic_layout(data_root, probe_data):
    tumour = probe_data.tumour
    assert tumour.class_counts() == {"tissue": NUM_CASES * TISSUE_BLOCKS_PER_CASE,
                                     "tumour": NUM_CASES * TUMOUR_BLOCKS_PER_CASE}
    assert tumour.cases == [f"sts/STS_{i + 1:03d}/CT_image.nii.gz" for i in range(NUM_CASES)]
    assert tuple(tumour.tiles.shape) == (NUM_CASES, 1, 64, 64, 64)  # one 64^3 tile per case
    assert tumour.intensity.shape == (tumour.num_blocks, 4)
    # tumour blocks are bright: their mean windowed intensity is (200 + 1000) / 2000 = 0.6, tissue 0.45
    assert np.allclose(tumour.intensity[tumour.labels == 1, 0], 0.6, atol=0.01)
    assert np.allclose(tumour.intensity[tumour.labels == 0, 0], 0.45, atol=0.01)
    organ = probe_data.organ
    assert organ.class_names == {1: "spleen", 2: "kidney_right", 5: "liver"}  # organ 7 has 2 blocks only
    assert organ.class_counts() == {"spleen": 16, "kidney_right": 16, "liver": 16}
    # cached: a second call returns the same prepared object
    assert prepare_probe_data(data_root, tiling="grid") is probe_data


def test_per_block_tiles_hold_every_block_at_one_position(data_root, probe_data, tiny_model):
    grid = probe_data.tumour
    per_block = prepare_probe_data(data_root, tiling="per_block").tumour
    # the same blocks, labels, cases, intensities and places in the crop; one tile per block
    for name in ("labels", "groups", "intensity", "location"):
        assert np.array_equal(getattr(per_block, name), getattr(grid, name)), name
    assert per_block.num_tiles == per_block.num_blocks == 240 and grid.num_tiles == NUM_CASES
    assert per_block.summary()["tiling"] == "per_block" and per_block.summary()["num_tiles"] == 240
    position = PER_BLOCK_POSITION * 16
    assert set(per_block.block_token.tolist()) == {(PER_BLOCK_POSITION * 4 + PER_BLOCK_POSITION) * 4 + PER_BLOCK_POSITION}
    assert len(set(grid.block_token.tolist())) > 1
    tiles = torch.cat(list(per_block.tile_batches(7, "cpu")))
    assert tuple(tiles.shape) == (240, 1, 64, 64, 64)
    per = 4
    for i in (0, 57, 239):  # the block's voxels sit at the fixed position of its own tile, the grid tile's elsewhere
        token = int(grid.block_token[i])
        local = (token // per**2, token // per % per, token % per)
        in_grid = grid.tiles[grid.block_tile[i], 0][tuple(slice(c * 16, c * 16 + 16) for c in local)]
        assert torch.equal(tiles[i, 0, position : position + 16, position : position + 16, position : position + 16], in_grid)
    # a block at the volume's start has zero padding before it in its tile
    first = int(np.nonzero((per_block.tile_origin[:, 1:] == 0).all(1))[0][0])
    assert float(tiles[first, 0, :position].abs().max()) == 0.0
    # its feature is the encoder's at that token of its own tile
    encoder, _ = build_encoder(tiny_model, TINY)
    encoder.eval()
    features = block_features(encoder, per_block, "tokens")
    with torch.no_grad():
        direct = encoder(tiles[57:58], stop_after_sa=True).tokens[0, int(per_block.block_token[57])]
    assert torch.allclose(torch.as_tensor(features[57]), direct, atol=1e-6)
    with pytest.raises(ValueError, match="tiling must be one of"):
        prepare_probe_data(data_root, tiling="sliding")


def test_location_features_and_the_tile_position_row(probe_data):
    tumour = probe_data.tumour
    # the synthetic body ends at z = 52, so the crop is 64 x 64 x 54 (2 voxels of margin) padded to 64
    assert np.allclose(block_location([[0, 0, 0]], (64, 64, 54), 16)[0, :3], [0.375, 0.375, 0.5 - 8 / 54])
    assert np.allclose(block_location([[1, 2, 1]], (64, 64, 54), 16)[0, 3], np.sqrt(0.125**2 + 0.125**2 + (0.5 - 24 / 54) ** 2))
    assert tumour.location.shape == (tumour.num_blocks, len(LOCATION_FEATURES))
    # a feature that knows only a block's token in its tile: here every tumour block is put at token 0
    labels = tumour.labels
    token = np.where(labels == 1, 0, 1 + np.arange(len(labels)) % 63)
    placed = dataclasses.replace(tumour, block_token=token)
    assert tile_position_probe(placed)["auc"] > 0.99
    assert tile_position_probe(dataclasses.replace(tumour, tiling="per_block")) is None
    baselines = probe_baselines(probe_data, TINY, n_random_seeds=0)
    assert baselines["location"]["features"] == list(INTENSITY_STATISTICS + LOCATION_FEATURES)
    assert baselines["location"]["tumour"]["num_features"] == 8
    assert baselines["tile_position"]["tumour"]["num_features"] == 64
    references = reference_scores(baselines)
    assert references["location"]["tumour_auc"] == baselines["location"]["tumour"]["auc"]
    assert references["tile_position"]["tumour_ap"] == baselines["tile_position"]["tumour"]["ap"]


def test_grouped_folds_never_split_a_case():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 7, size=300)
    labels = (rng.random(300) < 0.2).astype(int)
    folds = grouped_folds(labels, groups, n_folds=5, seed=3)
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(300))  # each block tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    result = linear_probe(rng.standard_normal((300, 6)), labels, groups, n_folds=5, case_names=[f"c{i}" for i in range(7)])
    for fold in result["per_fold"]:
        assert not set(fold["train_cases"]) & set(fold["test_cases"])
    assert sorted(c for f in result["per_fold"] for c in f["test_cases"]) == [f"c{i}" for i in range(7)]
    # 2 cases at most 2 folds; 1 case cannot be cross-validated
    assert len(grouped_folds(labels[groups < 2], groups[groups < 2], n_folds=5)) == 2
    with pytest.raises(ValueError, match="at least 2 cases"):
        grouped_folds(labels[groups == 0], groups[groups == 0])


def test_repeated_probe_averages_different_splits_and_rejects_zero_repeats():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 9, size=400)
    labels = (rng.random(400) < 0.25).astype(int)
    features = rng.standard_normal((400, 5)) + 0.8 * labels[:, None]
    single = linear_probe(features, labels, groups, seed=4)
    result = linear_probe(features, labels, groups, seed=4, repeats=3)
    assert result["repeats"] == 3 and len(result["auc_per_repeat"]) == 3 and len(result["per_fold"]) == 3 * result["folds"]
    assert result["auc_per_repeat"][0] == pytest.approx(single["auc"])  # repeat 0 is the single run's split
    assert result["auc"] == pytest.approx(np.mean(result["auc_per_repeat"]))
    assert result["ap"] == pytest.approx(np.mean(result["ap_per_repeat"]))
    test_cases = {r: [tuple(f["test_cases"]) for f in result["per_fold"] if f["repeat"] == r] for r in range(3)}
    assert len({tuple(sorted(v)) for v in test_cases.values()}) > 1  # the repeats split the cases differently
    with pytest.raises(ValueError, match="repeats"):
        linear_probe(features, labels, groups, repeats=0)
    knn = organ_knn(features, groups % 3, k=5, folds=5, repeats=4)
    assert knn["repeats"] == 4 and len(knn["accuracy_per_repeat"]) == 4
    assert knn["accuracy_per_repeat"][0] == pytest.approx(organ_knn(features, groups % 3, k=5, folds=5)["accuracy_mean"])
    assert knn["accuracy_mean"] == pytest.approx(np.mean(knn["accuracy_per_repeat"]))
    assert len(set(knn["accuracy_per_repeat"])) > 1


def test_intensity_probe_separates_and_shuffled_labels_do_not(probe_data):
    baselines = probe_baselines(probe_data, TINY, n_random_seeds=1)
    intensity = baselines["intensity"]
    assert intensity["tumour"]["auc"] > 0.99 and intensity["tumour"]["ap"] > 0.95
    assert intensity["organ"]["accuracy_mean"] > 0.95
    random_init = baselines["random_init"]
    assert random_init["seeds"] == [0] and 0.0 <= random_init["tumour_auc_mean"] <= 1.0
    assert random_init["tumour_auc_std"] == 0.0
    # the same probe on labels shuffled across blocks has nothing to learn
    tumour = probe_data.tumour
    shuffled = np.random.default_rng(0).permutation(tumour.labels)
    assert linear_probe(tumour.intensity, shuffled, tumour.groups)["auc"] < 0.8


def test_organ_knn_reads_against_tile_identity_and_groups_by_ct(probe_data, tmp_path):
    # one organ CT: its 48 blocks lie in one 64^3 tile, so the tile says nothing about the organ
    organ = probe_data.organ
    assert len(np.unique(organ.block_tile)) == 1
    single = tile_identity_knn(organ, repeats=2)
    assert single["grouped"] is False and single["accuracy_mean"] < 0.6
    assert probe_baselines(probe_data, TINY, n_random_seeds=0)["tile_identity"]["organ"]["accuracy_mean"] == single["accuracy_mean"]
    # two organ CTs: the folds hold out whole CTs; the intensity statistics carry over, the tile does not
    root = tmp_path / "two"
    rng = np.random.default_rng(1)
    write_case(root, "STS_001", TUMOUR_STARTS[0], rng)
    write_case(root, "STS_002", TUMOUR_STARTS[1], rng)
    write_organs(root, rng, "first")
    write_organs(root, rng, "second")
    two = prepare_probe_data(root, organ_label_offset=None, tiling="grid")
    assert len(two.organ.cases) == 2 and two.organ.class_counts() == {"spleen": 32, "kidney_right": 32, "liver": 32}
    baselines = probe_baselines(two, TINY, n_random_seeds=0)
    intensity, tile = baselines["intensity"]["organ"], baselines["tile_identity"]["organ"]
    assert intensity["grouped"] is True and intensity["folds"] == 2 and intensity["accuracy_mean"] > 0.95
    assert tile["grouped"] is True and tile["accuracy_mean"] < 0.6


def test_run_probe_and_cli_write_probe_json(data_root, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    fire.Fire(main, command=["--encoder_path", str(tiny_model), "--data_dir", str(data_root), "--output_dir", str(out),
                             "--n_random_seeds", "1", "--depths", "[1,1,1,1]", "--num_heads", "[1,2,2,4]",
                             "--feature_size", "12"])
    printed = capsys.readouterr().out
    assert "tumour AUC" in printed and "random init (1 seed)" in printed and "intensity" in printed
    assert "mean of 5 CV splits" in printed
    result = json.loads((out / "probe.json").read_text())
    assert result["encoder"]["kwargs"]["depths"] == [1, 1, 1, 1]
    assert result["encoder"]["path"] == str(tiny_model)
    tumour = result["encoder"]["tumour"]
    assert 0.0 <= tumour["auc"] <= 1.0 and 0.0 <= tumour["ap"] <= 1.0 and tumour["folds"] == 5
    assert tumour["repeats"] == 5 and len(tumour["per_fold"]) == 25 and result["encoder"]["organ"]["repeats"] == 5
    assert result["settings"]["probe"]["cv_repeats"] == 5
    for fold in tumour["per_fold"]:
        assert len(fold["test_cases"]) == 1 and fold["test_cases"][0] not in fold["train_cases"]
    assert result["data"]["tumour"]["blocks"] == {"tissue": 220, "tumour": 20}
    assert result["data"]["tumour"]["blocks_per_case"]["sts/STS_001/CT_image.nii.gz"] == {"tissue": 44, "tumour": 4}
    assert result["data"]["organ"]["blocks"] == {"spleen": 16, "kidney_right": 16, "liver": 16}
    assert result["random_init"]["seeds"] == [0] and len(result["random_init"]["per_seed"]) == 1
    assert result["intensity"]["tumour"]["auc"] > 0.99
    # the default tiling is per block: no tile-position or tile-identity row, the intensity + place-in-crop row
    assert result["settings"]["tiling"] == "per_block" and result["data"]["tumour"]["num_tiles"] == 240
    assert "per_block tiling" in printed and "position in tile" not in printed and "tile identity" not in printed
    assert result["tile_identity"]["organ"] is None
    # what the encoder adds to the no-encoder row: its features next to the 4 intensity statistics and 4 place values
    added = result["encoder"]["tumour_with_references"]
    assert added["num_features"] == 31 * 12 + 8 and added["repeats"] == 5 and 0.0 <= added["auc"] <= 1.0
    assert result["random_init"]["tumour_with_references_auc_mean"] == result["random_init"]["per_seed"][0]["tumour_with_references"]["auc"]
    assert "encoder + intensity + place" in printed and "random init + intensity + place" in printed
    assert "intensity + place in crop (no encoder)" in printed and result["tile_position"]["tumour"] is None
    assert result["settings"]["knn"]["cv"].startswith("StratifiedKFold over the blocks of one CT")
    # the default feature is multiscale (DEFAULT_PROBE_FEATURE): 31 F values per block
    assert result["encoder"]["organ"]["k"] == 5 and result["settings"]["feature"] == "multiscale"
    assert tumour["num_features"] == 31 * 12

    # the API with the SA-stage tokens: 8 F values per block; same blocks, reused from the cache
    api = run_probe(tiny_model, data_root, encoder_kwargs=TINY, output_dir=tmp_path / "api", feature="tokens",
                    n_random_seeds=0)
    assert (tmp_path / "api" / "probe.json").is_file()
    assert api["data"]["tumour"]["num_blocks"] == 240 and api["random_init"]["tumour_auc_mean"] is None
    assert 0.0 <= api["encoder"]["tumour"]["auc"] <= 1.0 and api["encoder"]["tumour"]["num_features"] == 8 * 12
    with pytest.raises(ValueError, match="unknown options"):
        main(str(tiny_model), str(data_root), output_dir=str(tmp_path / "x"), featuresize=12)


def test_encoder_arguments_from_config_files(tmp_path):
    train = REPO / "bundles" / "pretrain" / "configs" / "train.yaml"
    kwargs = encoder_kwargs_from_config(train)
    assert encoder_args_with_defaults(**kwargs) == DEFAULT_ENCODER_KWARGS
    layer = tmp_path / "bigger.yaml"
    layer.write_text("feature_size: 24\ndepths: [1, 1, 1, 1]\n")
    layered = encoder_kwargs_from_config([train, layer])
    assert layered["feature_size"] == 24 and layered["depths"] == [1, 1, 1, 1] and layered["num_heads"] == [4, 4, 8, 16]
    # keyword arguments win over the config file
    encoder, used = build_encoder(None, {"num_heads": [1, 2, 2, 4]}, [train, layer])
    assert used["feature_size"] == 24 and used["num_heads"] == [1, 2, 2, 4] and encoder.feature_size == 24
    # the preprocessing the probe must copy: train.yaml's window, or a layered one
    assert preprocessing_from_config(train) == {"spacing": [2.0, 2.0, 2.0], "hu_range": [-1000.0, 1000.0]}
    soft = tmp_path / "soft.yaml"
    soft.write_text("hu_range: [-175, 250]\n")
    assert preprocessing_from_config([train, soft])["hu_range"] == [-175.0, 250.0]
    # and the architecture a built encoder records rebuilds it
    assert SASwinEncoder(**encoder_kwargs_from_encoder(encoder)).state_dict().keys() == encoder.state_dict().keys()
    # an encoder file carries its architecture: the config's is not needed, and a contradicting argument is an error
    path = save_encoder(encoder, tmp_path / "model.pt")
    rebuilt, used = build_encoder(path)
    assert used == encoder.encoder_args and rebuilt.feature_size == 24
    with pytest.raises(ValueError, match="other architecture arguments.*feature_size=24 vs 12"):
        build_encoder(path, {"feature_size": 12})


def test_bad_inputs_name_the_files(tmp_path, tiny_model, data_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"data folder '.*empty' has no \(image, mask\) pair"):
        prepare_probe_data(empty)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_probe_data(tmp_path / "absent")

    rng = np.random.default_rng(2)
    off = tmp_path / "off_grid"
    write_case(off, "STS_001", (16, 16, 16), rng, shape=(64, 64, 48))
    _save(np.zeros((64, 64, 40)), off / "sts" / "STS_001" / "CT_mask.nii.gz", np.uint8)
    with pytest.raises(ValueError) as error:
        prepare_probe_data(off)
    message = str(error.value)
    assert "STS_001/CT_mask.nii.gz" in message and "STS_001/CT_image.nii.gz" in message
    assert "(64, 64, 40)" in message and "(64, 64, 48)" in message
    shifted = tmp_path / "shifted"
    write_case(shifted, "STS_001", (16, 16, 16), rng, shape=(32, 32, 32), tumour_size=(16, 16, 16))
    mask = nib.load(shifted / "sts" / "STS_001" / "CT_mask.nii.gz")
    _save(mask.get_fdata(), shifted / "sts" / "STS_001" / "CT_mask.nii.gz", np.uint8,
          affine=AFFINE + np.array([[0, 0, 0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="different affines"):
        prepare_probe_data(shifted)

    small = tmp_path / "small_tumours"
    for i in range(2):
        write_case(small, f"STS_{i:03d}", (20, 20, 20), rng, shape=(32, 32, 32), tumour_size=(4, 4, 4))
    with pytest.raises(ValueError, match="no tumour block in any of the 2 cases"):
        prepare_probe_data(small)

    other = tmp_path / "other.pt"
    torch.save(SASwinEncoder(feature_size=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)).state_dict(), other)
    with pytest.raises(ValueError, match=re.escape(str(other)) + ".*does not match the encoder architecture"):
        run_probe(other, data_root, encoder_kwargs=TINY, output_dir=tmp_path / "never")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        run_probe(tmp_path / "absent.pt", data_root, encoder_kwargs=TINY, output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_bundle_config_runs_the_probe(data_root, tiny_model, tmp_path):
    from monai.bundle import ConfigWorkflow

    bundle = REPO / "bundles" / "pretrain"
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "probe.yaml"), meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False, bundle_root=str(bundle), dataset_dir=str(data_root), checkpoint=str(tiny_model),
        output_dir=str(tmp_path / "probe"), encoder_kwargs={"depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]},
        n_random_seeds=1, device="cpu",
    )
    workflow.initialize()
    workflow.run()
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    # the architecture: train.yaml's encoder_def (feature_size 12, SA at stage 3) updated by encoder_kwargs
    assert result["encoder"]["kwargs"]["feature_size"] == 12 and result["encoder"]["kwargs"]["depths"] == [1, 1, 1, 1]
    assert result["settings"]["config_file"][0].endswith("train.yaml")
    assert result["data"]["tumour"]["blocks"] == {"tissue": 220, "tumour": 20}
    # hu_range: null in probe.yaml = the pretrain config's window
    assert result["settings"]["hu_range"] == [-1000.0, 1000.0]


class PretrainModel(nn.Module):
    """Stands in for DAGMaNPretrainModel: the probe reads ``.encoder``."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


def test_handler_writes_the_curve_and_logs(probe_data, tmp_path, caplog):
    torch.manual_seed(5)
    network = PretrainModel(SASwinEncoder(**TINY)).train()
    trainer = Engine(lambda engine, batch: None)
    handler = ProbeHandler(network=network, data=probe_data, interval=2, output_dir=tmp_path / "curve",
                           log_dir=tmp_path / "tb", n_random_seeds=1)
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="dagman_components.analysis.probe_handler"):
        handler.attach(trainer)
        assert torch.equal(torch.get_rng_state(), rng_before)  # random-init references leave the RNG alone
        trainer.run([0, 0], max_epochs=3)
    # epoch 2 (interval) and the end (epoch 3), each once
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("probe epoch")]
    assert len(lines) == 2
    assert re.fullmatch(r"probe epoch 2 iteration 4: tumour AUC \d\.\d{3}, AP \d\.\d{3}, organ kNN \d\.\d{3}", lines[0])
    assert lines[1].startswith("probe epoch 3 iteration 6:")
    curve = json.loads((tmp_path / "curve" / "probe_curve.json").read_text())
    assert [p["iteration"] for p in curve["points"]] == [4, 6]
    assert curve["references"]["random_init"]["seeds"] == [0]
    assert curve["references"]["intensity"]["tumour_auc"] > 0.99
    assert 0.0 <= curve["references"]["tile_identity"]["organ_knn"] <= 1.0
    assert 0.0 <= curve["references"]["location"]["tumour_auc"] <= 1.0  # the grid tiling: a tile-position line too
    assert 0.0 <= curve["references"]["tile_position"]["tumour_auc"] <= 1.0
    assert curve["encoder_kwargs"]["depths"] == [1, 1, 1, 1]  # read back from the encoder at attach time
    assert (tmp_path / "curve" / "probe_curve.png").stat().st_size > 0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert network.encoder.training  # back in train mode


@pytest.mark.skipif(not (REAL / "sts").is_dir(), reason="real data not available (../shared/data/real)")
def test_real_sts_cases(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(SASwinEncoder(**TINY).state_dict(), model)
    result = run_probe(model, REAL, encoder_kwargs=TINY, output_dir=tmp_path, organs=False, max_cases=4,
                       n_folds=4, n_random_seeds=1)
    tumour = result["data"]["tumour"]
    assert tumour["cases"] == [f"sts/STS_00{i}/CT_image.nii.gz" for i in range(1, 5)]
    assert tumour["blocks"]["tumour"] > 0 and tumour["blocks"]["tissue"] > tumour["blocks"]["tumour"]
    assert result["encoder"]["tumour"]["folds"] == 4 and result["data"]["organ"] is None
    for row in (result["encoder"]["tumour"], result["intensity"]["tumour"]):
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["ap"] <= 1.0
    assert json.loads((tmp_path / "probe.json").read_text())["data"]["tumour"]["cases"] == tumour["cases"]


def test_last_stage_feature_is_the_stride_32_slice_of_the_multiscale_feature():
    from types import SimpleNamespace

    from dagman_components.analysis.probe.scores import _stage_features

    torch.manual_seed(0)
    f = 2
    # hidden states x0..x4 of one 64^3 tile: strides 2..32, F..16F channels; the token grid is 4^3 (stride 16)
    states = [torch.randn(1, f * 2**i, 64 // 2 ** (i + 1), 64 // 2 ** (i + 1), 64 // 2 ** (i + 1)) for i in range(5)]
    out = SimpleNamespace(hidden_states=states)
    multiscale = _stage_features(out, "multiscale", (4, 4, 4))
    last = _stage_features(out, "last_stage", (4, 4, 4))
    assert multiscale.shape == (1, 64, 31 * f) and last.shape == (1, 64, 16 * f)
    assert torch.equal(last, multiscale[..., 15 * f :])
