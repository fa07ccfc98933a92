"""The fast Swin forward against MONAI's own: same outputs and gradients, MONAI's parameters, hooks still fire."""

import copy
import math

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging, get_window_size

import dagman_components.networks.fast_swin as fast_swin
import dagman_components.networks.fused_linear as fused_module
from dagman_components.networks import SASwinEncoder
from dagman_components.networks.fast_swin import relative_position_bias, shift_mask, swin_stage, window_attention
from dagman_components.networks.fused_linear import FUSED_LINEAR_MIN_ROWS, fused_linear_available

TOLERANCE = 1e-5  # the fused kernel adds float rounding; the explicit path is the same arithmetic as MONAI's


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights: MONAI initialises the relative position bias near 0 and LayerNorm at identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return module


def stage(dim=12, depth=2, heads=3, downsample=True):
    torch.manual_seed(0)
    layer = BasicLayer(dim, depth, heads, (4, 4, 4), drop_path=[0.0] * depth, qkv_bias=True,
                       downsample=PatchMerging if downsample else None)
    return perturbed(layer)


def run_both(layer, x_channels_last, grad):
    """(fast output, MONAI output, fast input grad, MONAI input grad); both outputs channels-last."""
    results = []
    for fast in (True, False):
        x = x_channels_last.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = swin_stage(layer, x) if fast else layer(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
            if grad:
                weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
                (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    (fast_out, fast_grad), (monai_out, monai_grad) = results
    return fast_out, monai_out, fast_grad, monai_grad


@pytest.mark.parametrize("grad", [True, False], ids=["training", "no_grad"])
@pytest.mark.parametrize("grid", [(8, 8, 8), (8, 4, 12), (4, 4, 4)], ids=["shifted", "non_cubic", "one_window"])
def test_stage_equals_monai_outputs_and_input_gradients(grid, grad):
    layer = stage()
    if grid != (4, 4, 4):  # the grid of one window has no shift: the second block runs unshifted
        assert any(s > 0 for s in get_window_size(grid, layer.window_size, layer.shift_size)[1])
    x = torch.randn(2, *grid, 12)
    fast_out, monai_out, fast_grad, monai_grad = run_both(layer, x, grad)
    assert fast_out.shape == monai_out.shape
    assert torch.allclose(fast_out, monai_out, atol=TOLERANCE, rtol=0)
    if grad:
        assert torch.allclose(fast_grad, monai_grad, atol=TOLERANCE, rtol=0)


def test_parameter_gradients_equal_monai():
    layer = stage()
    twin = copy.deepcopy(layer)
    x = torch.randn(2, 8, 8, 8, 12)
    weights = torch.randn(2, 4, 4, 4, 24)
    (swin_stage(layer, x) * weights).sum().backward()
    (twin(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1) * weights).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), twin.parameters()):
        # sums over every token of the stage, in another order: relative to the gradient's scale
        assert torch.allclose(p.grad, q.grad, atol=TOLERANCE * float(q.grad.abs().max()), rtol=TOLERANCE), name


@pytest.mark.skipif(not fused_linear_available(), reason="this PyTorch has no oneDNN fused linear")
@pytest.mark.parametrize("grad", [True, False], ids=["training", "no_grad"])
def test_stage_large_enough_for_the_fused_linear_equals_monai(monkeypatch, grad):
    """16,384 tokens: the stage's qkv, proj and MLP products run oneDNN's fused linear (GELU fused without grad)."""
    calls = []
    original = fused_module._pointwise
    monkeypatch.setattr(fused_module, "_pointwise", lambda *args: calls.append(args[-1]) or original(*args))
    layer = stage()
    x = torch.randn(2, 16, 16, 32, 12)
    assert 2 * 16 * 16 * 32 >= FUSED_LINEAR_MIN_ROWS
    fast_out, monai_out, fast_grad, monai_grad = run_both(layer, x, grad)
    # two blocks: qkv, proj, fc1, fc2 each
    assert calls == (["none"] * 8 if grad else ["none", "none", "gelu", "none"] * 2)
    assert torch.allclose(fast_out, monai_out, atol=TOLERANCE, rtol=0)
    if grad:
        assert torch.allclose(fast_grad, monai_grad, atol=TOLERANCE, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    layer = stage()
    for block in layer.blocks:
        block.use_checkpoint = True
    fast_out, monai_out, fast_grad, monai_grad = run_both(layer, torch.randn(1, 8, 8, 8, 12), grad=True)
    assert torch.allclose(fast_out, monai_out, atol=TOLERANCE, rtol=0)
    assert torch.allclose(fast_grad, monai_grad, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("chunk_bytes", [2 * 3 * 64 * 64 * 4, 16 * 3 * 64 * 64 * 4], ids=["chunk_below_mask", "chunk_above_mask"])
def test_chunks_keep_each_window_with_its_own_shift_mask(monkeypatch, chunk_bytes):
    """Chunks smaller and larger than one sample's 8 windows: each window must still get its own mask row."""
    monkeypatch.setattr(fast_swin, "ATTENTION_CHUNK_BYTES", chunk_bytes)
    layer = stage(downsample=False)
    fast_out, monai_out, fast_grad, monai_grad = run_both(layer, torch.randn(3, 8, 8, 8, 12), grad=True)
    assert torch.allclose(fast_out, monai_out, atol=TOLERANCE, rtol=0)
    assert torch.allclose(fast_grad, monai_grad, atol=TOLERANCE, rtol=0)


def test_fused_and_explicit_attention_agree_with_gradients_of_the_bias():
    """The fused path with autograd (what CUDA training runs) gives the relative position bias its gradient too."""
    attn = perturbed(stage().blocks[1].attn)
    mask = shift_mask((8, 8, 8), (4, 4, 4), (2, 2, 2), torch.device("cpu"))
    x = torch.randn(2 * mask.shape[0], 64, 12)
    grads = []
    for fused in (True, False):
        attn.zero_grad()
        out = window_attention(attn, x, mask, fused=fused)
        out.square().sum().backward()
        grads.append((out.detach(), attn.relative_position_bias_table.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=TOLERANCE, rtol=0)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-4)
    assert grads[1][1].abs().max() > 0


def test_relative_position_bias_is_monai_lookup():
    attn = stage().blocks[0].attn
    bias = relative_position_bias(attn, 64)
    index = attn.relative_position_index[:64, :64].reshape(-1)
    expected = attn.relative_position_bias_table[index].reshape(64, 64, -1).permute(2, 0, 1)
    assert torch.equal(bias, expected) and bias.is_contiguous()


def test_padded_grid_runs_monai_forward_exactly():
    """A grid that is not a multiple of the window: MONAI pads, and the fast forward hands over to it."""
    layer = stage()
    fast_out, monai_out, _, _ = run_both(layer, torch.randn(1, 6, 6, 6, 12), grad=False)
    assert torch.equal(fast_out, monai_out)


def test_hooks_on_the_softmax_fire_and_see_monai_attention():
    layer = stage()
    seen = []
    handle = layer.blocks[1].attn.softmax.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with torch.no_grad():
        swin_stage(layer, torch.randn(1, 8, 8, 8, 12))
    handle.remove()
    assert seen == [(8, 3, 64, 64)]  # one call over all 8 windows, as MONAI's forward makes it
    with torch.no_grad():
        swin_stage(layer, torch.randn(1, 8, 8, 8, 12))
    assert len(seen) == 1  # without hooks the fast forward runs again


def test_autocast_keeps_the_residual_stream_float32():
    layer = stage(downsample=False)
    x = torch.randn(1, 8, 8, 8, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = swin_stage(layer, x)
    reference = swin_stage(layer, x).detach()
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > 0.999


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    fast = perturbed(SASwinEncoder(feature_size=12, depths=(2, 2, 2, 2)), seed=1)
    monai = copy.deepcopy(fast)
    monai.swin_forward = "monai"
    return fast, monai


@pytest.mark.parametrize("grad", [True, False], ids=["training", "no_grad"])
def test_encoder_outputs_and_input_gradients_equal_monai_forward(encoders, grad):
    x = torch.rand(2, 1, 64, 64, 64)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    outputs = []
    for encoder in encoders:
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = encoder(xi, mask, return_premerge=True)
            if grad:
                (sum((h * h).mean() for h in out.hidden_states) + out.cls.square().sum()).backward()
        outputs.append((out, xi.grad))
    (fast, fast_grad), (monai, monai_grad) = outputs
    for a, b in zip(fast.hidden_states, monai.hidden_states):
        assert torch.allclose(a, b, atol=TOLERANCE, rtol=0)
    for key in ("tokens", "cls", "satt", "premerge_tokens", "pooled"):
        assert torch.allclose(getattr(fast, key), getattr(monai, key), atol=TOLERANCE, rtol=0), key
    if grad:
        assert torch.allclose(fast_grad, monai_grad, atol=TOLERANCE, rtol=0)


def test_fast_encoder_weights_load_into_swin_unetr_and_match_it(encoders):
    fast, _ = encoders
    unetr = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 2, 2), num_heads=(4, 4, 8, 16),
                      window_size=4, patch_norm=True).eval()
    result = unetr.load_state_dict({k: v for k, v in fast.state_dict().items() if k.startswith("swinViT.")}, strict=False)
    assert not [k for k in result.missing_keys if k.startswith("swinViT.")] and result.unexpected_keys == []
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        theirs = unetr.swinViT(x, normalize=True)
        ours = fast.eval()(x).hidden_states
    for i in range(3):  # x3 and x4 follow the inline SA tokens
        assert torch.allclose(ours[i], theirs[i], atol=TOLERANCE, rtol=0)


def test_channels_last_input_changes_nothing(encoders):
    fast, _ = encoders
    twin = copy.deepcopy(fast)
    twin.channels_last = True
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        a, b = fast(x), twin(x)
    assert all(torch.allclose(p, q, atol=TOLERANCE, rtol=0) for p, q in zip(a.hidden_states, b.hidden_states))


def test_unknown_swin_forward_is_refused():
    with pytest.raises(ValueError, match="swin_forward"):
        SASwinEncoder(feature_size=12, swin_forward="flash")


def test_training_attention_takes_monai_metatensors():
    """Bundles feed MONAI MetaTensors: the recomputed attention must accept them (MetaTensor.new_empty takes no varargs)."""
    from monai.data import MetaTensor

    layer = stage()
    x = torch.randn(1, 8, 8, 8, 12)
    plain = swin_stage(layer, x.clone().requires_grad_(True))
    meta = swin_stage(layer, MetaTensor(x.clone()).requires_grad_(True))
    assert torch.allclose(torch.as_tensor(meta), plain, atol=TOLERANCE, rtol=0)


# ---- windows of mask tokens, computed once per sample ------------------------------------------------------


def uniform_tokens(grid=(16, 8, 8), channels=12, fraction=0.7, seed=0):
    """(x (B, *grid, C), uniform (B, *grid)): 4^3 units (one window each) of which ``fraction`` hold one per-sample token."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *grid, channels, generator=generator)
    units = [g // 4 for g in grid]
    chosen = torch.rand(2, *units, generator=generator) < fraction
    uniform = chosen.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    shared = torch.randn(2, 1, 1, 1, channels, generator=generator)
    return torch.where(uniform.unsqueeze(-1), shared, x), uniform


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_uniform_windows_stage_equals_the_plain_stage_with_drop_path(monkeypatch, checkpointed):
    calls = []
    original = fast_swin._block_on_mixed_windows
    monkeypatch.setattr(fast_swin, "_block_on_mixed_windows", lambda *a: calls.append(a[-1].float().mean()) or original(*a))
    torch.manual_seed(0)
    layer = perturbed(BasicLayer(12, 2, 3, (4, 4, 4), drop_path=[0.3, 0.3], qkv_bias=True, downsample=PatchMerging,
                                 use_checkpoint=checkpointed))
    layer.train()
    twin = copy.deepcopy(layer)
    x, uniform = uniform_tokens(fraction=0.9)  # enough for shifted windows of 8 units to be uniform too
    weights = torch.randn(2, 8, 4, 4, 24)
    results = []
    for module, flags in ((layer, uniform), (twin, None)):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(3)  # the same drop-path draws
        out, _ = fast_swin.swin_stage_with_uniform_tokens(module, xi, flags)
        (out * weights).sum().backward()
        results.append((out.detach(), xi.grad))
    assert len(calls) == 2 and float(calls[0]) > 0.5 and float(calls[1]) > 0.1  # both blocks ran on fewer windows
    (out, grad), (reference, reference_grad) = results
    assert torch.allclose(out, reference, atol=TOLERANCE, rtol=0)
    # the shared tokens' gradient reaches one window of each sample (what they are computed from, e.g. the
    # mask token, gets the same sum); every other token's is its own
    assert torch.allclose(grad[~uniform], reference_grad[~uniform], atol=TOLERANCE, rtol=0)
    for sample in range(2):
        total, reference_total = grad[sample][uniform[sample]].sum(0), reference_grad[sample][uniform[sample]].sum(0)
        assert torch.allclose(total, reference_total, atol=TOLERANCE * float(reference_total.abs().max()), rtol=TOLERANCE)
    for (name, p), q in zip(layer.named_parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=TOLERANCE * float(q.grad.abs().max()), rtol=TOLERANCE), name


def test_uniform_windows_stage_equals_monai_and_marks_the_tokens_still_shared():
    layer = stage()
    x, uniform = uniform_tokens(fraction=0.9)
    with torch.no_grad():
        out, flags = fast_swin.swin_stage_with_uniform_tokens(layer, x, uniform)
        reference = layer(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    assert torch.allclose(out, reference, atol=TOLERANCE, rtol=0)
    assert flags is not None and flags.shape == out.shape[:-1]
    assert flags.any() and not flags.all()
    for sample in range(2):
        shared = out[sample][flags[sample]]
        assert torch.allclose(shared, shared[:1].expand_as(shared), atol=TOLERANCE, rtol=0)
    # and a stage that sees no shared tokens passes None on
    assert fast_swin.swin_stage_with_uniform_tokens(layer, x, torch.zeros_like(uniform))[1] is None


def test_uniform_windows_below_the_threshold_run_every_window(monkeypatch):
    monkeypatch.setattr(fast_swin, "_block_on_mixed_windows", lambda *a: pytest.fail("ran on a selection"))
    layer = stage()
    x, uniform = uniform_tokens(fraction=0.0)
    uniform[:, :4, :4, :4] = True  # one window of 32 per sample: below UNIFORM_WINDOW_MIN_FRACTION
    with torch.no_grad():
        out, _ = fast_swin.swin_stage_with_uniform_tokens(layer, x, uniform)
    assert torch.allclose(out, swin_stage(layer, x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    "train, shape", [(True, (2, 64, 64, 64)), (False, (2, 64, 64, 64)), (True, (1, 64, 96, 32))],
    ids=["student", "teacher", "one_non_cubic_crop"],
)
def test_encoder_skipping_mask_windows_gives_the_same_outputs_and_gradients(train, shape):
    torch.manual_seed(0)
    skipping = perturbed(SASwinEncoder(feature_size=12, depths=(2, 2, 2, 2), drop_path_rate=0.2), seed=2)
    plain = copy.deepcopy(skipping)
    plain.skip_mask_windows = False
    x = torch.rand(shape[0], 1, *shape[1:])
    tokens = math.prod(s // 16 for s in shape[1:])
    mask = torch.rand(shape[0], tokens, generator=torch.Generator().manual_seed(1)) < 0.7
    results = []
    for encoder in (skipping, plain):
        encoder.train(train)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(4)
        out = encoder(xi, mask, return_premerge=True)
        (sum((h * h).mean() for h in out.hidden_states) + out.cls.square().sum()).backward()
        results.append((out, xi.grad, {k: p.grad for k, p in encoder.named_parameters() if p.grad is not None}))
    (out, grad, grads), (reference, reference_grad, reference_grads) = results
    for a, b in zip(out.hidden_states, reference.hidden_states):
        assert torch.allclose(a, b, atol=TOLERANCE, rtol=0)
    for key in ("cls", "satt", "premerge_tokens"):
        assert torch.allclose(getattr(out, key), getattr(reference, key), atol=TOLERANCE, rtol=0), key
    assert torch.allclose(grad, reference_grad, atol=TOLERANCE, rtol=0)
    assert grads.keys() == reference_grads.keys()
    scale = max(float(g.abs().max()) for g in reference_grads.values())
    for name, g in grads.items():
        assert torch.allclose(g, reference_grads[name], atol=TOLERANCE * scale, rtol=TOLERANCE), name
