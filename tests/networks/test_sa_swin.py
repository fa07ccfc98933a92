import pytest
import torch
from monai.networks.nets import SwinUNETR

from dagman_components.networks import SASwinEncoder, load_encoder_state_dict, swin_unetr_state_dict
from dagman_components.networks.sa_swin import (
    BUNDLE_ENCODER_ARGS,
    encoder_source,
    make_encoder,
    read_encoder_file,
    save_encoder,
)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SASwinEncoder(feature_size=12).eval()


def test_output_shapes(encoder):
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        out = encoder(x)
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 12, 32, 32, 32), (2, 24, 16, 16, 16), (2, 48, 8, 8, 8), (2, 96, 4, 4, 4), (2, 192, 2, 2, 2)
    ]
    assert out.grid_size == (4, 4, 4)
    assert out.tokens.shape == (2, 64, 96) and out.sa_tokens.shape == (2, 64, 96)
    assert out.cls.shape == (2, 96) and out.pooled.shape == (2, 192)
    assert out.satt.shape == (2, 64) and out.head_attention.shape == (2, 8, 64)


def test_satt_rows_sum_to_one_and_average_the_heads(encoder):
    with torch.no_grad():
        out = encoder(torch.rand(3, 1, 64, 64, 64))
    assert torch.allclose(out.satt.sum(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.head_attention.sum(dim=-1), torch.ones(3, 8), atol=1e-5)
    assert (out.satt >= 0).all()
    assert torch.allclose(out.satt, out.head_attention.mean(dim=1))


def test_mask_replaces_masked_tokens_only(encoder):
    torch.manual_seed(1)
    with torch.no_grad():
        encoder.mask_token.fill_(5.0)
    x = torch.rand(1, 1, 64, 64, 64)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, 0] = True  # token (0,0,0): voxels [0:16)^3, patches [0:8)^3
    captured = {}
    handle = encoder.swinViT.pos_drop.register_forward_hook(lambda m, i, o: captured.setdefault("x0", o))
    with torch.no_grad():
        encoder(x, mask)
        masked_x0 = captured.pop("x0")
        encoder(x)
        clean_x0 = captured.pop("x0")
    handle.remove()
    with torch.no_grad():
        encoder.mask_token.zero_()
    assert torch.allclose(masked_x0[0, :, :8, :8, :8], torch.full_like(masked_x0[0, :, :8, :8, :8], 5.0))
    outside = torch.ones_like(masked_x0, dtype=torch.bool)
    outside[:, :, :8, :8, :8] = False
    assert torch.equal(masked_x0[outside], clean_x0[outside])


def test_without_semantic_attention():
    enc = SASwinEncoder(feature_size=12, use_semantic_attention=False).eval()
    with torch.no_grad():
        out = enc(torch.rand(1, 1, 64, 64, 64))
    assert out.cls is None and out.satt is None and out.tokens.shape == (1, 64, 96)


@pytest.mark.parametrize("sa_stage,grid", [(1, 16), (2, 8), (4, 2)])
def test_sa_stage_sets_the_token_grid(sa_stage, grid):
    enc = SASwinEncoder(feature_size=12, sa_stage=sa_stage).eval()
    with torch.no_grad():
        out = enc(torch.rand(1, 1, 64, 64, 64), torch.zeros(1, grid**3, dtype=torch.bool))
    assert out.satt.shape == (1, grid**3) and out.tokens.shape[-1] == 12 * 2**sa_stage


def test_bad_inputs_name_the_shape(encoder):
    with pytest.raises(ValueError, match=r"\(1, 1, 60, 64, 64\)|60"):
        encoder(torch.rand(1, 1, 60, 64, 64))
    with pytest.raises(ValueError, match="mask must have shape"):
        encoder(torch.rand(1, 1, 64, 64, 64), torch.zeros(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        encoder(torch.rand(1, 64, 64, 64))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = SASwinEncoder(feature_size=12)
    ckpt = SASwinEncoder(feature_size=12, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 64, 64, 64)
    for net in (plain, ckpt):
        out = net(x)
        (out.pooled.sum() + out.cls.sum()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_save_load_roundtrip_and_mismatch_errors(tmp_path, encoder):
    path = tmp_path / "model.pt"
    torch.save(encoder.state_dict(), path)
    fresh = SASwinEncoder(feature_size=12).load_pretrained(path)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    torch.save({"model": {"module." + k: v for k, v in encoder.state_dict().items()}}, tmp_path / "ddp.pt")
    SASwinEncoder(feature_size=12).load_pretrained(tmp_path / "ddp.pt")
    with pytest.raises(ValueError, match="shape mismatches") as err:
        SASwinEncoder(feature_size=24).load_pretrained(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="unexpected keys.*semantic_attention"):
        SASwinEncoder(feature_size=12, use_semantic_attention=False).load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        SASwinEncoder(feature_size=12).load_pretrained(tmp_path / "nowhere.pt")
    missing, unexpected = load_encoder_state_dict(SASwinEncoder(feature_size=12, use_semantic_attention=False), path, strict=False)
    assert not missing and unexpected and all(k.startswith("semantic_attention") for k in unexpected)


def test_the_encoder_file_carries_weights_architecture_and_version(tmp_path):
    torch.manual_seed(0)
    original = SASwinEncoder(feature_size=24, depths=(2, 2, 2, 2), sa_stage=2, sa_inline=False, drop_path_rate=0.1)
    path = save_encoder(original, tmp_path / "model.pt")
    stored = torch.load(path, weights_only=True)
    assert stored["format"] == "dagman-encoder" and stored["format_version"] == 1 and stored["package_version"]
    assert stored["encoder_args"]["feature_size"] == 24 and stored["encoder_args"]["depths"] == [2, 2, 2, 2]
    assert "drop_path_rate" not in stored["encoder_args"]  # a training option: each user sets its own
    rebuilt = SASwinEncoder.from_pretrained(path)  # no argument: the file says which encoder it is
    assert rebuilt.encoder_args == original.encoder_args and rebuilt.sa_stage == 2 and not rebuilt.sa_inline
    for k, v in original.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x).satt, original.eval()(x).satt)
    # overrides: training options apply, architecture arguments must agree with the file
    options = SASwinEncoder.from_pretrained(path, drop_path_rate=0.3, use_checkpoint=True, feature_size=24)
    assert options.swinViT.layers1[0].use_checkpoint and options.encoder_args == original.encoder_args
    assert options.swinViT.layers1[0].blocks[1].drop_path.drop_prob > 0
    with pytest.raises(ValueError, match=r"model\.pt holds an encoder with other architecture arguments.*feature_size=24 vs 12"):
        SASwinEncoder.from_pretrained(path, feature_size=12)
    with pytest.raises(ValueError, match="unknown encoder arguments"):
        SASwinEncoder.from_pretrained(path, feature_sise=24)
    # an encoder built by hand with another forward than the file's is an error, not a silent load
    with pytest.raises(ValueError, match="sa_inline=False vs True"):
        SASwinEncoder(feature_size=24, depths=(2, 2, 2, 2), sa_stage=2).load_pretrained(path)


def test_bare_state_dicts_load_with_explicit_arguments(tmp_path, encoder):
    path = tmp_path / "bare.pt"
    torch.save(encoder.state_dict(), path)
    assert read_encoder_file(path)[0] is None
    with pytest.raises(ValueError, match=r"bare\.pt is a bare state dict.*Pass the arguments it was built with"):
        SASwinEncoder.from_pretrained(path)
    with pytest.raises(ValueError, match=r"bare\.pt is a bare state dict"):
        SASwinEncoder.from_pretrained(path, drop_path_rate=0.1)  # a training option says nothing of the architecture
    loaded = SASwinEncoder.from_pretrained(path, feature_size=12)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in encoder.state_dict().items())
    with pytest.raises(ValueError, match="shape mismatches"):
        SASwinEncoder.from_pretrained(path, feature_size=24)
    # MONAI SwinUNETR weights: the Swin part loads (strict=False) into an encoder of the same size
    unetr = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    torch.save(unetr.state_dict(), tmp_path / "swin_unetr.pt")
    from_monai = SASwinEncoder.from_pretrained(tmp_path / "swin_unetr.pt", strict=False, feature_size=12)
    assert torch.equal(from_monai.swinViT.layers2[0].blocks[0].attn.qkv.weight,
                       unetr.swinViT.layers2[0].blocks[0].attn.qkv.weight)


def test_make_encoder_and_encoder_source(tmp_path, encoder):
    path = save_encoder(encoder, tmp_path / "model.pt")
    assert make_encoder(encoder) is encoder
    assert make_encoder(str(path)).encoder_args == encoder.encoder_args
    assert make_encoder({"feature_size": 24}).feature_size == 24
    assert make_encoder(None, {"feature_size": 24}, drop_path_rate=None).feature_size == 24
    # command-line text: "--pretrained false" arrives as the string "false"
    assert encoder_source("false", path, BUNDLE_ENCODER_ARGS) == BUNDLE_ENCODER_ARGS
    assert encoder_source("true", path, BUNDLE_ENCODER_ARGS) == str(path)
    assert encoder_source(True, path, {"feature_size": 48}, weights=False) == encoder.encoder_args
    with pytest.raises(ValueError, match="pretrained must be true or false"):
        encoder_source("maybe", path)
    with pytest.raises(ValueError, match="needs pretrained_path"):
        encoder_source(True, None)


def test_swin_weights_load_into_monai_swin_unetr(encoder):
    unetr = SwinUNETR(
        in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16), window_size=4,
        patch_norm=True,
    )
    result = unetr.load_state_dict(swin_unetr_state_dict(encoder.state_dict()), strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if k.startswith("swinViT.")]
    assert torch.equal(unetr.swinViT.layers3[0].blocks[0].attn.qkv.weight, encoder.swinViT.layers3[0].blocks[0].attn.qkv.weight)


def test_attention_volume_puts_each_token_on_its_voxel_block():
    encoder = SASwinEncoder(feature_size=12).eval()
    with torch.no_grad():
        out = encoder(torch.rand(1, 1, 64, 32, 96))
    assert out.grid_size == (4, 2, 6)
    volume = out.attention_volume((64, 32, 96))
    assert volume.shape == (1, 1, 64, 32, 96)
    assert out.attention_volume((64, 32, 96), per_head=True).shape == (1, out.head_attention.shape[1], 64, 32, 96)
    # a one-hot SATT on token (i, j, k) peaks inside voxels [16i, 16i+16) x [16j, ...) x [16k, ...)
    satt = torch.zeros(1, 48)
    satt[0, 1 * 12 + 1 * 6 + 4] = 1.0  # token (1, 1, 4) in row-major order of the (4, 2, 6) grid
    one_hot = out.__class__(**{**out.__dict__, "satt": satt}).attention_volume((64, 32, 96))[0, 0]
    peak = (one_hot == one_hot.max()).nonzero()
    assert len(peak) and (peak // 16 == torch.tensor([1, 1, 4])).all()


def test_attention_volume_without_semantic_attention_says_so():
    encoder = SASwinEncoder(feature_size=12, use_semantic_attention=False).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="no semantic attention"):
        encoder(torch.rand(1, 1, 32, 32, 32)).attention_volume((32, 32, 32))
