"""The benchmark's plumbing on a tiny configuration (its figures are reported from real runs, never asserted)."""

import json

import pytest
from monai.bundle import ConfigParser

from dagman_components.benchmark import BenchmarkConfig, data_peak_rss, main, peak_step_memory

from .bundles.conftest import BUNDLES

TINY = dict(roi_size=32, feature_size=12, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
            iterations=2, warmup=1, data_batches=2, phantom_volumes=2)


def test_defaults_are_the_pretrain_bundle_defaults():
    config = ConfigParser.load_config_file(BUNDLES / "pretrain" / "configs" / "train.yaml")
    defaults = BenchmarkConfig()
    assert [defaults.roi_size] * 3 == config["roi_size"]
    for key in ("batch_size", "feature_size", "head_out_dim", "head_hidden_dim", "head_bottleneck_dim", "amp",
                "amp_dtype", "use_checkpoint", "num_workers", "fused_optimizer", "swin_forward", "compile_swin",
                "channels_last", "skip_mask_windows", "cache"):
        assert getattr(defaults, key) == config[key], key
    assert list(defaults.depths) == config["depths"] and list(defaults.num_heads) == config["num_heads"]


@pytest.mark.slow
def test_writes_every_documented_figure(tmp_path, capsys):
    output = tmp_path / "bench.json"
    result = main(**TINY, memory=False, output=str(output))
    saved = json.loads(output.read_text())
    assert saved["ratio_dagman_to_lower_bound"] == pytest.approx(result["ratio_dagman_to_lower_bound"])
    rows = saved["variants"]
    assert list(rows) == ["monai_lower_bound", "lower_bound", "dagman", "dagman_noisy_satt", "smit"]
    for row in rows.values():
        assert len(row["times_s"]) == 2 and row["median_s_per_iteration"] > 0
        assert row["volumes_per_s"] == pytest.approx(2 / row["median_s_per_iteration"])
        assert row["flops_per_step"] > 0
        assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_step"] / row["median_s_per_iteration"])
        # per timed round: CPU time in user and kernel mode and minor faults of the process during the step
        assert len(row["user_s"]) == len(row["system_s"]) == len(row["minor_faults"]) == 2
        assert row["user_s_per_iteration"] > 0 and row["system_s_per_iteration"] >= 0
        assert all(faults >= 0 for faults in row["minor_faults"])
    # the fast forward computes each sample's windows of mask tokens once (skip_mask_windows)
    assert rows["lower_bound"]["flops_per_step"] < rows["monai_lower_bound"]["flops_per_step"]
    # the clean teacher pass is work the noisy-SATT step does not do
    assert rows["dagman"]["flops_per_step"] > rows["dagman_noisy_satt"]["flops_per_step"]
    median = {name: row["median_s_per_iteration"] for name, row in rows.items()}
    assert saved["ratio_dagman_to_monai_lower_bound"] == pytest.approx(median["dagman"] / median["monai_lower_bound"])
    assert saved["ratio_dagman_to_smit"] == pytest.approx(median["dagman"] / median["smit"])
    user = {name: row["user_s_per_iteration"] for name, row in rows.items()}
    assert saved["ratio_dagman_to_monai_lower_bound_user"] == pytest.approx(user["dagman"] / user["monai_lower_bound"])
    assert saved["data_to_step_throughput"] == pytest.approx(saved["data_volumes_per_s"] / rows["dagman"]["volumes_per_s"])
    assert saved["data_to_assumed_step_throughput"] == pytest.approx(saved["data_volumes_per_s"] * 0.25 / 2)
    assert saved["ratio_clean_to_noisy_satt"] == pytest.approx(median["dagman"] / median["dagman_noisy_satt"])
    table = capsys.readouterr().out
    assert "clean / noisy SATT" in table and "ratio DAGMaN / MONAI lower bound" in table and "user CPU time" in table
    assert "ratio DAGMaN / lower bound" in table and "data / step throughput" in table
    assert saved["allocator"]["name"] in {"glibc", "jemalloc", "tcmalloc"} and "malloc: " in table


@pytest.mark.slow
def test_data_memory_probe_reads_the_disk_cache_in_a_fresh_process():
    """Plumbing only: the flat-RSS figures (20 vs 200 volumes) are measured by the benchmark, not asserted."""
    cfg = BenchmarkConfig(**{**TINY, "phantom_shape": (96, 96, 96), "cache": "disk"})
    assert data_peak_rss(cfg) > 50 * 2**20  # at least the interpreter with torch and MONAI imported


@pytest.mark.slow
def test_gradient_checkpointing_lowers_the_measured_peak():
    # F=24: at F=12 the attention keeps no weights for the backward and what checkpointing saves is within
    # the allocator's noise (678 vs 677 MB); at F=24 it is 1113 vs 896 MiB
    small = {**TINY, "roi_size": 64, "depths": (2, 2, 2, 2), "feature_size": 24}
    without = peak_step_memory(BenchmarkConfig(**small), "dagman")
    with_checkpointing = peak_step_memory(BenchmarkConfig(**small, use_checkpoint=True), "dagman")
    assert 0 < with_checkpointing < without


def test_bad_roi_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        main(roi_size=48)


def test_memory_allocator_is_read_from_ld_preload():
    from dagman_components.benchmark import memory_allocator

    assert memory_allocator({}) == {"name": "glibc", "ld_preload": None, "malloc_conf": None}
    jemalloc = memory_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "MALLOC_CONF": "dirty_decay_ms:-1"})
    assert jemalloc == {"name": "jemalloc", "ld_preload": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                        "malloc_conf": "dirty_decay_ms:-1"}
    assert memory_allocator({"LD_PRELOAD": "/opt/libiomp5.so:/usr/lib/libtcmalloc.so.4"})["name"] == "tcmalloc"
    assert memory_allocator({"LD_PRELOAD": "/opt/libiomp5.so"})["name"] == "glibc"


@pytest.mark.parametrize("skip_mask_windows", [False, True])
def test_the_fast_forward_counts_monai_arithmetic_unless_it_skips_mask_windows(skip_mask_windows):
    import torch

    from dagman_components.benchmark import _make_step, step_flops

    cfg = BenchmarkConfig(**{**TINY, "skip_mask_windows": skip_mask_windows})
    monai, fast = (step_flops(_make_step(cfg, v, torch.device("cpu"))) for v in ("monai_lower_bound", "lower_bound"))
    if skip_mask_windows:
        assert fast < 0.9 * monai
    else:
        # MONAI's arithmetic (the fused kernel's FLOPs are counted like MONAI's matrix products), plus the
        # scores the CPU training attention recomputes in its backward instead of keeping them
        assert monai < fast <= 1.1 * monai


def test_fused_linear_counts_the_flops_of_its_product():
    """The fast forward's oneDNN linear must count what F.linear counts, or achieved_flops_per_s would fall."""
    import torch

    from dagman_components.benchmark import step_flops
    from dagman_components.networks.fused_linear import FUSED_LINEAR_MIN_ROWS, fused_linear, fused_linear_available

    if not fused_linear_available():
        pytest.skip("this PyTorch has no oneDNN fused linear")
    linear = torch.nn.Linear(12, 36)
    x = torch.randn(FUSED_LINEAR_MIN_ROWS, 12)
    with torch.no_grad():
        fused = step_flops(lambda: fused_linear(linear, x))
        plain = step_flops(lambda: linear(x))
    assert fused == plain == 2 * FUSED_LINEAR_MIN_ROWS * 12 * 36
