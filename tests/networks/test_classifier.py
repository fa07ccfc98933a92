"""SAClassifier: heads, modes, pretrained loading, attention, loss, export."""

import pytest
import torch
import torch.nn.functional as F

from dagman_components.networks import (
    AttentionInferer,
    BinaryClassificationLoss,
    SAClassifier,
    SASwinEncoder,
    read_encoder_file,
    save_cpu_state_dict,
    save_encoder,
)

TINY = {"feature_size": 12}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A self-describing encoder file, as the pretrain bundle writes it."""
    torch.manual_seed(1)
    return save_encoder(SASwinEncoder(**TINY), tmp_path_factory.mktemp("encoder") / "model.pt")


@pytest.mark.parametrize(
    "feature, num_classes, in_features", [("cls", 1, 96), ("pooled", 1, 192), ("cls", 2, 96)]
)
def test_output_is_logits_of_the_chosen_feature(feature, num_classes, in_features):
    torch.manual_seed(0)
    model = SAClassifier(TINY, num_classes=num_classes, feature=feature).eval()
    x = torch.rand(2, 1, 32, 32, 64)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert model.head[-1].in_features == in_features
    encoded = model.encoder(x)
    feature_vector = encoded.cls if feature == "cls" else encoded.pooled
    torch.testing.assert_close(logits, model.head(feature_vector))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="feature"):
        SAClassifier(TINY, feature="mean")
    with pytest.raises(ValueError, match="mode"):
        SAClassifier(TINY, mode="probe")
    with pytest.raises(ValueError, match="use_semantic_attention"):
        SAClassifier({**TINY, "use_semantic_attention": False}, feature="cls")
    with pytest.raises(ValueError, match="multiples of 32"):
        SAClassifier(TINY)(torch.rand(1, 1, 32, 32, 40))
    with pytest.raises(ValueError, match="already built"):
        SAClassifier(SASwinEncoder(**TINY), drop_path_rate=0.1)


def test_linear_probe_trains_only_one_linear_layer_on_a_frozen_eval_encoder(encoder_file):
    model = SAClassifier(encoder_file, mode="linear_probe", drop_path_rate=0.5)
    model.train()
    assert isinstance(model.head, torch.nn.Linear)
    assert not model.encoder.training and model.head.training
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    x = torch.rand(2, 1, 32, 32, 32)
    first = model(x)
    torch.testing.assert_close(first, model(x))  # no drop path: the encoder is in eval mode
    first.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())


def test_finetune_trains_encoder_and_head():
    torch.manual_seed(0)
    model = SAClassifier(TINY).train()
    assert isinstance(model.head[0], torch.nn.LayerNorm)
    model(torch.rand(2, 1, 32, 32, 32)).sum().backward()
    assert model.encoder.semantic_attention.cls_token.grad is not None
    assert model.encoder.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0


def test_pretrained_weights_are_loaded(encoder_file):
    model = SAClassifier(encoder_file)  # the file says feature_size 12: no architecture argument needed
    assert model.encoder.feature_size == 12 and model.head[-1].in_features == 96
    _, saved = read_encoder_file(encoder_file)
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    scratch = SAClassifier(TINY)
    assert not torch.equal(scratch.encoder.semantic_attention.cls_token, saved["semantic_attention.cls_token"])
    built = SASwinEncoder.from_pretrained(encoder_file)
    assert SAClassifier(built).encoder is built


def test_the_encoder_file_decides_the_architecture(tmp_path):
    torch.manual_seed(0)
    wider = save_encoder(SASwinEncoder(feature_size=24, use_semantic_attention=False), tmp_path / "wider.pt")
    model = SAClassifier(str(wider), feature="pooled", encoder_args=TINY)  # encoder_args: only for bare files
    assert model.encoder.feature_size == 24 and model.encoder.semantic_attention is None
    assert model.head[-1].in_features == 24 * 16


def test_missing_pretrained_file_gives_a_hint(tmp_path):
    missing = tmp_path / "pretrain" / "models" / "model.pt"
    with pytest.raises(FileNotFoundError, match="Run bundles/pretrain first") as error:
        SAClassifier(missing)
    assert str(missing) in str(error.value) and "--pretrained false" in str(error.value)


def test_mismatched_pretrained_checkpoint_names_file_and_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(SASwinEncoder(feature_size=24).state_dict(), path)  # a bare state dict: no architecture in it
    with pytest.raises(ValueError, match="shape mismatches") as error:
        SAClassifier(path, encoder_args=TINY)
    assert str(path) in str(error.value)
    assert "mask_token: checkpoint (1, 24, 1, 1, 1) vs model (1, 12, 1, 1, 1)" in str(error.value)
    with pytest.raises(ValueError, match="bare state dict.*Pass the arguments it was built with") as error:
        SAClassifier(path)
    assert str(path) in str(error.value)
    assert SAClassifier(path, encoder_args={"feature_size": 24}).encoder.feature_size == 24


def test_attention_aligned_with_input_and_same_logits():
    torch.manual_seed(0)
    model = SAClassifier(TINY).eval()
    x = torch.rand(2, 1, 32, 64, 32)
    out = model.predict_with_attention(x)
    torch.testing.assert_close(out["logits"], model(x))
    assert out["attention"].shape == (2, 1, 32, 64, 32)
    assert out["attention"].min() >= 0
    # SATT of 2 x 4 x 2 tokens sums to 1; each token covers 16^3 voxels of the input
    torch.testing.assert_close(out["attention"].sum(dim=(1, 2, 3, 4)), torch.full((2,), 16.0**3), rtol=1e-4, atol=1e-2)
    via_inferer = AttentionInferer()(x, model)
    torch.testing.assert_close(via_inferer["attention"], out["attention"])
    with pytest.raises(TypeError, match="predict_with_attention"):
        AttentionInferer()(x, torch.nn.Identity())


def test_loss_matches_torch_for_one_and_two_logits():
    logits1 = torch.tensor([[0.3], [-1.2], [2.0]])
    logits2 = torch.tensor([[0.1, 0.3], [0.5, -1.2], [-1.0, 2.0]])
    label = torch.tensor([[1.0], [0.0], [1.0]])
    torch.testing.assert_close(BinaryClassificationLoss()(logits1, label), F.binary_cross_entropy_with_logits(logits1, label))
    torch.testing.assert_close(
        BinaryClassificationLoss(pos_weight=3.0)(logits1, label.reshape(-1)),
        F.binary_cross_entropy_with_logits(logits1, label, pos_weight=torch.tensor([3.0])),
    )
    torch.testing.assert_close(BinaryClassificationLoss()(logits2, label), F.cross_entropy(logits2, torch.tensor([1, 0, 1])))
    with pytest.raises(ValueError, match="1 or 2 logits"):
        BinaryClassificationLoss()(torch.zeros(3, 3), label)


def test_traced_model_predicts_as_eager():
    torch.manual_seed(0)
    model = SAClassifier(TINY).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 1, 32, 32, 32))
        other = torch.rand(1, 1, 32, 32, 32)
        torch.testing.assert_close(traced(other), model(other))


def test_save_cpu_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, path)
    save_cpu_state_dict(path)
    assert torch.load(path, weights_only=True)["w"].device.type == "cpu"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        save_cpu_state_dict(tmp_path / "missing.pt")
