"""Gather the eleventh and twelfth sessions' numbers into ``session12.json`` (study.md, those sections).

Reads, from the run folders of this machine: the 30-epoch objective screens' five-split probes
(``probe_s11_*.json``, ``probe_koleo*.json``, written by ``stage_probe.py``), the collapse monitors of the SMIT
seed 1 and 2 runs (``long_run.epoch_monitors``, every 5 epochs), the position control (``position_control.py``)
the added-value probe (``added_value.py``), a per-block learning curve (``stage_probe.py --tiling per_block``)
and the package probe's ``probe.json`` of one run.

    python docs/results/study/collect_session12.py --runs /work/runs --output docs/results/study/session12.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_run import epoch_monitors  # noqa: E402


def _multiscale(path: Path) -> dict:
    return {Path(k).parent.parent.name + "/" + Path(k).name: v["multiscale"] for k, v in json.loads(path.read_text()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("/work/runs"))
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    runs = args.runs
    screens = {}
    for name in ("probe_s11_amiponly_s0.json", "probe_s11_nogitd_s0.json", "probe_koleo15.json", "probe_koleo30.json"):
        screens.update(_multiscale(runs / name))
    position = {}
    for part in ("A", "B"):
        data = json.loads((runs / f"position_control_{part}.json").read_text())
        position["grid_tiling_baselines"] = data["grid_tiling_baselines"]
        for key, value in data["encoders"].items():
            position.setdefault("encoders", {})[Path(key).parent.parent.name + "/" + Path(key).name] = value
    added = {Path(k.split(" ")[0]).parent.parent.name + "/" + Path(k.split(" ")[0]).name + k[len(k.split(" ")[0]):]
             if k.startswith("/") else k: v for k, v in json.loads((runs / "added_value.json").read_text()).items()}
    result = {
        "screens_30_epochs_seed0": {"settings": "study.yaml seed 0, 30 epochs; multiscale probe, 5 splits, HU -175..250",
                                    "probes": screens},
        "smit_monitors": {name: epoch_monitors(runs / name / "console.log", 5) for name in ("r8_smit_s1", "r9_smit_s2")},
        "position_control": position,
        "added_value_per_block": {"settings": "per-block tiles; [AUC, AP]; 5 splits; location = LOCATION_FEATURES",
                                  "probes": added},
        "per_block_curve_r5_indep_s2": {"settings": "stage_probe.py --tiling per_block --cv_repeats 5",
                                        "probes": _multiscale(runs / "per_block_curve_r5.json")},
    }
    # twelfth-session runs of seed 2 (init: r5_indep_s2's epoch 0): the encoder at the heads' lr, and AMIP alone
    for name, flags in (("s12_lr1_s2", "--seed 2 --encoder_lr_scale 1.0"),
                        ("s12_amip_s2", "--seed 2 --ampd_weight 0 --aitd_weight 0 --gitd_weight 0")):
        probes = runs / f"added_value_{name.rsplit('_', 1)[0]}.json"
        result.setdefault("seed2_variants", {})[name] = {
            "flags": flags,
            "monitors": epoch_monitors(runs / name / "console.log", 5),
            "added_value_per_block": json.loads(probes.read_text()) if probes.exists() else {},
        }
    cli = runs / "probe_cli_per_block_r4" / "probe.json"
    if cli.exists():  # the package's probe, per-block tiles, on r4's model.pt: its table's numbers
        probe = json.loads(cli.read_text())
        result["probe_cli_r4_per_block"] = {
            "command": "python -m dagman_components.analysis.probe --encoder_path RUN/models/model.pt --data_dir "
                       "../shared/data/real --config_file \"['bundles/pretrain/configs/train.yaml',"
                       "'bundles/pretrain/configs/study.yaml']\"",
            "encoder": {k: probe["encoder"][k]["auc"] for k in ("tumour", "tumour_with_references") if k in probe["encoder"]},
            "random_init": {k: v for k, v in probe["random_init"].items() if k != "per_seed"},
            "location": probe.get("location", {}).get("tumour", {}).get("auc"),
            "wall_time_s": probe["wall_time_s"],
        }
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
