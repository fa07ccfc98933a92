import json

from dagman_components.analysis.probe import build_encoder, evaluate_encoder, prepare_probe_data, probe_baselines

data = prepare_probe_data("../shared/data/real")
out = {}
for feature in ("multiscale",):
    for name, path, kw in (("DAGMaN", "/work/study/dagman_s0/models/model.pt", {}), ("SMIT", "/work/study/smit_s0/models/model.pt", {"use_semantic_attention": False})):
        enc, resolved = build_encoder(path, kw)
        r = evaluate_encoder(enc, data, feature=feature)
        base = probe_baselines(data, resolved, n_random_seeds=3, feature=feature)
        out[f"{name}/{feature}"] = {"tumour_auc": r["tumour"]["auc"], "tumour_ap": r["tumour"]["ap"], "organ_knn": r["organ"]["accuracy_mean"],
            "random_init": {k: v for k, v in base["random_init"].items() if k != "per_seed"}}
        print(name, feature, out[f"{name}/{feature}"], flush=True)
json.dump(out, open("/work/study/multiscale.json", "w"), indent=2)
