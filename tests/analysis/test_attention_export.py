import nibabel as nib
import numpy as np
import pytest
import torch

from dagman_components.analysis.attention_export import (
    AttentionMapNetwork,
    attention_export_postprocessing,
    attention_export_preprocessing,
    export_attention,
)
from dagman_components.networks import SASwinEncoder

# a left-anterior-inferior oriented, oblique-free but axis-permuted grid with 1.3 x 1.1 x 2.7 mm voxels
AFFINE = np.array([[0.0, -1.3, 0.0, 10.0], [1.1, 0.0, 0.0, -5.0], [0.0, 0.0, -2.7, 30.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (45, 50, 23)


@pytest.fixture
def ct_file(tmp_path):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).astype(np.float32)
    # a smooth off-centre blob, so a misaligned round trip shows
    blob = np.exp(-(((grid[0] - 12) / 6) ** 2 + ((grid[1] - 35) / 8) ** 2 + ((grid[2] - 7) / 4) ** 2))
    hu = (-900 + 1500 * blob).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, AFFINE), path)
    assert nib.aff2axcodes(AFFINE) != ("R", "A", "S")
    return path


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SASwinEncoder(feature_size=12, depths=(2, 2, 2, 2)).eval()


def test_satt_nifti_has_the_input_shape_and_affine(encoder, ct_file, tmp_path):
    path = export_attention(encoder, ct_file, tmp_path / "out")
    assert path == tmp_path / "out" / "ct_satt.nii.gz" and path.is_file()
    saved = nib.load(path)
    assert saved.shape == SHAPE
    np.testing.assert_allclose(saved.affine, AFFINE, atol=1e-5)
    values = saved.get_fdata()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() > 0
    heads = nib.load(export_attention(encoder, ct_file, tmp_path / "out", per_head=True))
    assert heads.shape == (*SHAPE, encoder.semantic_attention.num_heads)
    np.testing.assert_allclose(heads.affine, AFFINE, atol=1e-5)


def test_round_trip_puts_values_back_on_the_original_voxels(ct_file, tmp_path):
    """The inverse of the preprocessing, applied to the preprocessed image itself, gives back the windowed input."""
    preprocessing = attention_export_preprocessing(spacing=(2.0, 2.0, 2.0))
    data = preprocessing({"image": str(ct_file)})
    assert all(s % 32 == 0 for s in data["image"].shape[1:])
    data["pred"] = data["image"].clone()
    attention_export_postprocessing(preprocessing, tmp_path, output_postfix="roundtrip")(data)
    back = nib.load(tmp_path / "ct_roundtrip.nii.gz").get_fdata()
    original = np.clip((nib.load(ct_file).get_fdata() + 1000) / 2000, 0, 1)
    assert back.shape == original.shape
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.97
    # the peak lands where the blob is, not mirrored or transposed
    assert np.linalg.norm(np.subtract(np.unravel_index(back.argmax(), back.shape), (12, 35, 7))) <= 2


def test_network_output_and_errors(encoder):
    out = AttentionMapNetwork(encoder)(torch.rand(1, 1, 32, 32, 64))
    assert out.shape == (1, 1, 32, 32, 64)
    out = AttentionMapNetwork(encoder, per_head=True)(torch.rand(1, 1, 32, 32, 64))
    assert out.shape == (1, encoder.semantic_attention.num_heads, 32, 32, 64)
    with pytest.raises(ValueError, match="semantic attention"):
        AttentionMapNetwork(SASwinEncoder(feature_size=12, use_semantic_attention=False))
