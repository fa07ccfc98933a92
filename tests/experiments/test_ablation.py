"""The ablation runner: variant table, aggregation, resume from the cache, and a tiny end-to-end run."""

import json
import math
import time

import pytest
import torch

from dagman_components.experiments import ablation as abl
from dagman_components.experiments.ablation import (
    GROUPS,
    VARIANTS,
    AblationBudget,
    Paths,
    aggregate,
    report,
    run_ablation,
    runner,
    units,
    write_report,
    write_result,
)
from dagman_components.networks import read_encoder_file

# every size knob at its smallest: 2 phantoms, 32^3 crops, one epoch, tiny heads and evaluation sets
TINY = AblationBudget(
    seeds=1, sweep_seeds=1, roi_size=32, batch_size=1, pretrain_epochs=1, pretrain_phantoms=2,
    use_real_pretraining=False, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16, nodule_volumes=3,
    ft_epochs=1, organ_volumes=1, crops_per_organ=2, organ_image_size=32, head_diversity_volumes=1,
)


def test_variant_table_switches_the_papers_components():
    smit, sa, nt, dagman = (VARIANTS[v] for v in GROUPS["core"])
    assert smit == {"masking": "random", "use_semantic_attention": False, "aitd_weight": 0.0,
                    "teacher_drop_ratio": 0.0}
    assert sa == {"teacher_drop_ratio": 0.0}  # attention-guided masking (bundle default), clean teacher
    assert nt["masking"] == "random" and nt["use_semantic_attention"] is False and "teacher_drop_ratio" not in nt
    assert dagman == {}  # the bundle's defaults are DAGMaN's
    for term in ("ampd", "aitd", "gitd", "amip"):
        assert VARIANTS[f"DAGMaN w/o {term.upper()}"] == {f"{term}_weight": 0.0}
    pdr = [abl.variant_setting(v, "teacher_drop_ratio", 0.7) for v in GROUPS["pdr"]]
    assert pdr == [0.0, 0.3, 0.5, 0.7, 0.9]
    assert [abl.variant_setting(v, "sa_stage", 3) for v in GROUPS["sa_stage"]] == [1, 2, 3, 4]
    # the overrides are keys of the pretrain bundle's config
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_file(str(abl.BUNDLES_DIR / "pretrain" / "configs" / "train.yaml"))
    for overrides in VARIANTS.values():
        assert set(overrides) <= set(config), overrides
    assert abl.papers_feature("SMIT") == "pooled" and abl.papers_feature("DAGMaN") == "cls"
    # an untrained control has its variant's architecture (same overrides, same encoder arguments)
    for name, base in abl.UNTRAINED.items():
        assert VARIANTS[name] == VARIANTS[base] and name in GROUPS["control"] and base in GROUPS["control"]
        assert abl.encoder_arguments(name, AblationBudget()) == abl.encoder_arguments(base, AblationBudget())


def test_units_share_variants_across_groups_and_limit_sweep_seeds():
    budget = AblationBudget(seeds=3, sweep_seeds=2)
    todo = units(list(GROUPS), budget)
    pairs = [(v, s) for v, s, _ in todo]
    assert len(pairs) == len(set(pairs))
    assert {s for v, s in pairs if v == "DAGMaN"} == {0, 1, 2}
    assert {s for v, s in pairs if v == "PDR 0.3"} == {0, 1}
    assert {s for v, s in pairs if v == "SMIT, untrained"} == {0, 1, 2}  # controls pair with every core seed
    assert len(pairs) == 6 * 3 + (len(VARIANTS) - 6) * 2
    # core and control variants run every task, sweep-only variants the budget's sweep tasks
    assert abl.tasks_for("DAGMaN, untrained", list(GROUPS), budget, abl.TASKS) == list(abl.TASKS)
    assert abl.tasks_for("PDR 0.3", list(GROUPS), budget, abl.TASKS) == list(budget.sweep_tasks)
    assert set(abl.DEFAULT_GROUPS) == set(GROUPS) - {"control"}  # the controls are asked for with --only
    with pytest.raises(ValueError, match="unknown group"):
        units(["nope"], budget)


def test_aggregate_mean_and_sample_std():
    records = [{"variant": "A", "metrics": {"auc": v}} for v in (0.6, 0.7, 0.8)]
    records += [{"variant": "B", "metrics": {"auc": 0.5, "dice": float("nan")}},
                {"variant": "B", "metrics": {"auc": None, "dice": 0.25}}]
    summary = aggregate(records)
    assert summary["A"]["auc"]["mean"] == pytest.approx(0.7)
    assert summary["A"]["auc"]["std"] == pytest.approx(0.1)  # ddof=1 over seeds
    assert summary["A"]["auc"]["n"] == 3
    assert summary["B"]["auc"] == {"mean": 0.5, "std": None, "n": 1, "values": [0.5, pytest.approx(math.nan, nan_ok=True)]}
    assert summary["B"]["dice"]["mean"] == 0.25
    assert abl.format_mean_std(summary["A"]["auc"]) == "0.700 +- 0.100"
    assert abl.format_mean_std(summary["B"]["auc"]) == "0.500 (n=1)"
    assert abl.format_mean_std(None) == "-"


def test_pretraining_effect_pairs_each_variant_with_its_untrained_control_seed_by_seed(tmp_path):
    records = []
    for seed, (trained, untrained) in enumerate([(0.8, 0.6), (0.7, 0.65), (0.9, 0.5)]):
        records += [{"variant": "DAGMaN", "seed": seed, "task": "nodule_lp", "metrics": {"lp_auc": trained}},
                    {"variant": "DAGMaN, untrained", "seed": seed, "task": "nodule_lp", "metrics": {"lp_auc": untrained}},
                    # lower is better: a larger distance after pretraining is worse
                    {"variant": "DAGMaN", "seed": seed, "task": "organs_phantom",
                     "metrics": {"organs_phantom_intra": 0.2 + seed}},
                    {"variant": "DAGMaN, untrained", "seed": seed, "task": "organs_phantom",
                     "metrics": {"organs_phantom_intra": 0.1 + seed}},
                    {"variant": "DAGMaN", "seed": seed, "task": "nodule_ft", "metrics": {"ft_auc": 0.5 + (-0.1) ** seed}},
                    {"variant": "DAGMaN, untrained", "seed": seed, "task": "nodule_ft", "metrics": {"ft_auc": 0.5}}]
    records.append({"variant": "DAGMaN", "seed": 3, "task": "nodule_lp", "metrics": {"lp_auc": 0.1}})  # unpaired
    assert abl.paired_differences(records, "DAGMaN", "DAGMaN, untrained", "lp_auc") == pytest.approx([0.2, 0.05, 0.4])
    summary = aggregate(records)
    header, rows, lines = report._pretraining_effect(records, summary)
    assert header == ["metric", "DAGMaN", "DAGMaN, untrained", "DAGMaN: pretrained - untrained, per seed"]
    by_label = {row[0]: row for row in rows}
    assert by_label["nodule malignancy, linear probe AUC (100 %)"][3] == "+0.200 / +0.050 / +0.400"
    # the intra-cluster distance (scale-dependent) is in the table but not in the counts
    assert "phantom organs, intra-cluster distance" in by_label
    assert lines[0].startswith("DAGMaN pretrained vs the same encoder untrained (DAGMaN, untrained): of 2 scale-free "
                               "metrics, pretraining improved 1 on every seed, worsened 0 on every seed, and moved 1")
    assert "probability 0.25" in lines[0]
    assert lines[1] == "DAGMaN, improved on every seed: nodule malignancy, linear probe AUC (100 %)."
    # intra distance means: pretrained (0.2 + 1.2 + 2.2) / 3 = 1.2, untrained 1.1
    assert lines[2].startswith("DAGMaN: pretraining scaled the organ-crop feature distances to 1.09x")
    files = write_report(records, tmp_path, AblationBudget(), tmp_path, None, "cmd", 1.0, groups=["control"])
    text = files["markdown"].read_text()
    assert "## Pretrained vs untrained: what pretraining itself changed" in text
    assert "| DAGMaN, untrained | DAGMaN's architecture and initial weights (same seed), not pretrained |" in text


def test_relative_change_is_the_l2_ratio_over_floating_point_tensors():
    reference = {"w": torch.tensor([3.0, 4.0]), "steps": torch.tensor([7])}
    assert abl.relative_change({"w": torch.tensor([3.0, 4.0]), "steps": torch.tensor([9])}, reference) == 0.0
    assert abl.relative_change({"w": torch.tensor([3.0, 9.0]), "steps": torch.tensor([7])}, reference) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="lacks 1 tensors"):
        abl.relative_change({"steps": torch.tensor([7])}, reference)


def test_budget_fields_from_the_command_line_are_cast_and_checked():
    budget = abl.budget_with(abl.DEFAULT_BUDGET, pretrain_epochs="50", use_real_pretraining="false",
                             few_shot_fraction="0.5", seg_test_cases="None", sweep_tasks="nodule_lp,head_diversity")
    assert budget.pretrain_epochs == 50 and budget.use_real_pretraining is False and budget.few_shot_fraction == 0.5
    assert budget.seg_test_cases is None and budget.sweep_tasks == ("nodule_lp", "head_diversity")
    assert budget.fingerprint() != abl.DEFAULT_BUDGET.fingerprint()
    assert abl.budget_with(abl.DEFAULT_BUDGET, localization_cases=4).localization_cases == 4
    with pytest.raises(TypeError, match="unknown ablation option.*'epochs'.*budget fields"):
        abl.budget_with(abl.DEFAULT_BUDGET, epochs=3)


def test_budget_fingerprint_ignores_seed_counts_only():
    assert AblationBudget(seeds=1).fingerprint() == AblationBudget(seeds=5, sweep_seeds=1).fingerprint()
    assert AblationBudget(pretrain_epochs=2).fingerprint() != AblationBudget(pretrain_epochs=3).fingerprint()


def test_resume_skips_cached_results(tmp_path, monkeypatch):
    budget = TINY
    paths = Paths(tmp_path.resolve(), None)
    calls = []

    def fake_pretrain(variant, seed, paths_, budget_, datalist, resume):
        calls.append(("pretrain", variant, seed))
        paths_.encoder(variant, seed).parent.mkdir(parents=True, exist_ok=True)
        paths_.encoder(variant, seed).write_bytes(b"weights")
        return {"metrics": {"iterations": 2, "encoder_drift": 0.01}, "wall_s": 0.0}

    def fake_task(variant, seed, paths_, budget_, out_dir):
        calls.append(("nodule_lp", variant, seed))
        return {"metrics": {"lp_auc": 0.5}}

    monkeypatch.setattr(runner, "pretrain", fake_pretrain)
    monkeypatch.setattr(runner, "pretraining_datalist", lambda paths_, budget_: tmp_path / "list.json")
    monkeypatch.setitem(abl.TASK_FUNCTIONS, "nodule_lp", fake_task)
    run_ablation(tmp_path, budget, groups=["core"], tasks=["nodule_lp"], real_data=None)
    assert len(calls) == 8  # 4 variants x (pretrain + task)
    # a cached result of another budget is not reused; the others are
    stale = json.loads(paths.result("SMIT", 0, "nodule_lp").read_text())
    write_result(paths.result("SMIT", 0, "nodule_lp"), {**stale, "budget": "other"})
    calls.clear()
    result = run_ablation(tmp_path, budget, groups=["core"], tasks=["nodule_lp"], real_data=None, resume=True)
    assert calls == [("nodule_lp", "SMIT", 0)]
    assert len(result["records"]) == 8
    # without --resume everything runs again
    calls.clear()
    run_ablation(tmp_path, budget, groups=["core"], tasks=["nodule_lp"], real_data=None)
    assert len(calls) == 8


def test_real_data_tasks_skip_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "pretraining_datalist", lambda paths_, budget_: tmp_path / "list.json")
    result = run_ablation(tmp_path, TINY, groups=[], tasks=["localization", "segmentation"],
                          real_data=tmp_path / "no_such_folder")
    assert set(result["skipped"]) == {"localization", "segmentation"}
    assert "absent" in result["skipped"]["localization"]
    files = write_report(result["records"], tmp_path / "out", TINY, tmp_path, None, "cmd", 1.0,
                         skipped=result["skipped"], groups=[])
    text = files["markdown"].read_text()
    assert "`localization`: real data folder" in text and "Not run:" in text


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path):
    start = time.perf_counter()
    groups = {"core": ("SMIT", "DAGMaN")}
    tasks = ["nodule_lp", "nodule_ft", "organs_phantom", "head_diversity"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(abl.GROUPS, "core", groups["core"])
        result = run_ablation(tmp_path / "work", TINY, groups=["core"], tasks=tasks, real_data=None)
        files = write_report(result["records"], tmp_path / "out", TINY, tmp_path / "work", None,
                             "python -m dagman_components.experiments ablation", time.perf_counter() - start,
                             skipped=result["skipped"], groups=["core"])
    records = {(r["variant"], r["task"]): r for r in result["records"]}
    assert set(records) == {(v, t) for v in groups["core"] for t in ["pretrain"] + tasks}
    # equal budget: both variants ran the same number of iterations
    assert records[("SMIT", "pretrain")]["metrics"]["iterations"] == records[("DAGMaN", "pretrain")]["metrics"]["iterations"] == 2
    for variant in groups["core"]:
        lp = records[(variant, "nodule_lp")]["metrics"]
        assert 0.0 <= lp["lp_auc"] <= 1.0 and 0.0 <= lp["lp_auc_pooled"] <= 1.0
        assert 0.0 <= records[(variant, "nodule_ft")]["metrics"]["ft_auc"] <= 1.0
        organs = records[(variant, "organs_phantom")]["metrics"]
        assert organs["organs_phantom_inter"] > 0 and organs["organs_phantom_intra"] > 0
        assert any(k.startswith("hd_stage1") for k in records[(variant, "head_diversity")]["metrics"])
    assert records[("SMIT", "nodule_lp")]["feature"] == "pooled" and records[("DAGMaN", "nodule_lp")]["feature"] == "cls"
    # the encoders differ (SMIT has no SA module)
    dagman = abl.load_encoder("DAGMaN", 0, Paths((tmp_path / "work").resolve(), None), TINY)
    assert dagman.semantic_attention is not None
    # the drift recorded during pretraining (from a snapshot of the starting weights) is reproduced by
    # rebuilding the initial weights from the bundle and the seed, as done for cached or resumed runs
    work_paths = Paths((tmp_path / "work").resolve(), None)
    for variant in groups["core"]:
        recorded = records[(variant, "pretrain")]["metrics"]["encoder_drift"]
        assert 0.0 < recorded < 0.5
        assert abl.encoder_drift(variant, 0, work_paths, TINY) == pytest.approx(recorded, rel=1e-6)
    # the untrained control holds exactly the weights the pretrained encoder started from
    control = abl.pretrain("DAGMaN, untrained", 0, work_paths, TINY, work_paths.data / "pretrain_datalist.json", False)
    assert control["metrics"]["iterations"] == 0 and control["metrics"]["encoder_drift"] == 0.0
    untrained = read_encoder_file(work_paths.encoder("DAGMaN, untrained", 0))[1]  # self-describing, as the bundle writes
    initial = abl.initial_encoder_state("DAGMaN", 0, work_paths, TINY)
    assert untrained.keys() == initial.keys() and all(torch.equal(untrained[k], initial[k]) for k in initial)
    trained = read_encoder_file(work_paths.encoder("DAGMaN", 0))[1]
    assert abl.relative_change(trained, untrained) == pytest.approx(records[("DAGMaN", "pretrain")]["metrics"]["encoder_drift"], rel=1e-6)
    text = files["markdown"].read_text()
    assert "Pretraining moved the encoder weights by" in text
    assert "| metric | SMIT | DAGMaN |" in text and "0.895 (LIDC)" in text and "iterations per run" in text
    assert (tmp_path / "out" / "ablation_core.png").is_file()
    assert (tmp_path / "out" / "ablation_head_diversity.png").is_file()
    rows = files["csv"].read_text().splitlines()
    assert rows[0].startswith("variant,metric") and any(r.startswith("DAGMaN,lp_auc,") for r in rows)
    saved = json.loads(files["json"].read_text())
    assert saved["summary"]["DAGMaN"]["lp_auc"]["n"] == 1
