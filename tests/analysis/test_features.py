"""Feature extraction from a frozen encoder through MONAI's evaluator: shapes, order, eval mode, errors."""

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from dagman_components.analysis import FEATURE_TYPES, EncoderFeatures, FeatureCollector, extract_features
from dagman_components.networks import SASwinEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SASwinEncoder(feature_size=12, drop_path_rate=0.2)


def test_feature_shapes(encoder):
    x = torch.rand(2, 1, 32, 32, 32)
    cls, pooled = (EncoderFeatures(encoder, f).eval() for f in FEATURE_TYPES)
    assert cls(x).shape == (2, cls.out_channels) == (2, 96)
    assert pooled(x).shape == (2, pooled.out_channels) == (2, 192)


def test_extract_features_matches_a_plain_eval_forward(encoder):
    images = torch.rand(5, 1, 32, 32, 32)
    data = [{"image": images[i], "label": i % 2} for i in range(5)]
    network = EncoderFeatures(encoder, "cls").train()  # the evaluator must switch to eval mode itself
    features, labels = extract_features(network, DataLoader(Dataset(data), batch_size=2), device="cpu")
    assert features.shape == (5, 96) and features.dtype == np.float32
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 0])
    network.eval()
    with torch.no_grad():
        expected = network(images).numpy()
    # drop path (0.2) would make a train-mode forward differ
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert not any(p.grad is not None for p in network.parameters())


def test_errors_name_the_problem(encoder, tmp_path):
    with pytest.raises(ValueError, match="semantic attention"):
        EncoderFeatures(SASwinEncoder(feature_size=12, use_semantic_attention=False), "cls")
    with pytest.raises(ValueError, match="feature must be"):
        EncoderFeatures(encoder, "tokens")
    path = tmp_path / "model.pt"
    torch.save(encoder.state_dict(), path)
    with pytest.raises(ValueError, match=r"model\.pt.*shape mismatches"):
        EncoderFeatures(SASwinEncoder(feature_size=24)).load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        EncoderFeatures(encoder).load_pretrained(tmp_path / "missing.pt")
    unlabelled = DataLoader(Dataset([{"image": torch.rand(1, 32, 32, 32)}]), batch_size=1)
    with pytest.raises(ValueError, match="no 'label'"):
        extract_features(EncoderFeatures(encoder), unlabelled)
    with pytest.raises(RuntimeError, match="run the evaluator"):
        _ = FeatureCollector().features
