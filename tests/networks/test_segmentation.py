"""SASwinUNETR: SwinUNETR's decoder on the semantic-attention encoder, pretrained loading and its errors."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from dagman_components.networks import SASwinEncoder, SASwinUNETR, read_encoder_file, save_encoder

TINY = {"feature_size": 12}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A self-describing encoder file, as the pretrain bundle writes it."""
    torch.manual_seed(0)
    return save_encoder(SASwinEncoder(**TINY), tmp_path_factory.mktemp("encoder") / "model.pt")


@pytest.fixture(scope="module")
def bare_file(tmp_path_factory):
    """A bare state dict (an older pretrain bundle's model.pt)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bare") / "model.pt"
    torch.save(SASwinEncoder(**TINY).state_dict(), path)
    return path


def test_forward_shape_and_decoder_layout_of_swin_unetr():
    torch.manual_seed(0)
    net = SASwinUNETR(TINY, out_channels=3).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 64, 64, 96))
    assert out.shape == (1, 3, 64, 64, 96) and torch.isfinite(out).all()
    reference = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16))
    ours = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("swinViT.")}
    assert ours == theirs


def test_pretrained_weights_are_loaded(encoder_file):
    net = SASwinUNETR(encoder_file)
    _, saved = read_encoder_file(encoder_file)
    own = net.encoder.state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert net.decoder1.transp_conv.conv.in_channels == 12  # the decoder's widths follow the file's encoder
    scratch = SASwinUNETR(TINY)
    key = "swinViT.patch_embed.proj.weight"
    assert not torch.equal(scratch.encoder.state_dict()[key], saved[key])


def test_missing_and_mismatched_checkpoints_are_named(tmp_path, bare_file):
    missing = tmp_path / "pretrain" / "models" / "model.pt"
    with pytest.raises(FileNotFoundError, match=r"pretrain/models/model\.pt.*Run bundles/pretrain first.*--pretrained false"):
        SASwinUNETR(missing)
    with pytest.raises(ValueError, match=r"model\.pt does not match.*218 shape mismatches \[mask_token: checkpoint \(1, 12, 1, 1, 1\) vs model \(1, 24"):
        SASwinUNETR(bare_file, encoder_args={"feature_size": 24})
    with pytest.raises(ValueError, match=r"unexpected keys \[semantic_attention"):
        SASwinUNETR(bare_file, encoder_args={**TINY, "use_semantic_attention": False})
    with pytest.raises(ValueError, match=r"bare state dict"):
        SASwinUNETR(bare_file)
    loaded = SASwinUNETR(bare_file, encoder_args=TINY)  # a bare state dict loads with its arguments
    stored = torch.load(bare_file)
    assert all(torch.equal(loaded.encoder.state_dict()[k], v) for k, v in stored.items())


def test_frozen_encoder_and_gradient_checkpointing(encoder_file):
    net = SASwinUNETR(encoder_file, freeze_encoder=True, use_checkpoint=True)
    net.train()
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.decoder1.parameters())
    assert not net.encoder.training and net.decoder1.training
    layers = [net.encoder.swinViT.layers1[0], net.encoder.swinViT.layers4[0]]
    assert all(layer.use_checkpoint for layer in layers)


def test_small_inputs_are_an_error():
    net = SASwinUNETR(TINY)
    with pytest.raises(ValueError, match=r">= 64.*\(1, 1, 32, 64, 64\)"):
        net(torch.rand(1, 1, 32, 64, 64))
