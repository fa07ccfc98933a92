"""Where a collapsed global head's targets go: bottleneck and prototype geometry of the teacher's DINO heads.

    python docs/results/study/head_geometry.py RUN_DIR EPOCH [key=value ...]

Loads ``RUN_DIR/models/checkpoint_<EPOCH>.pt`` of a study run (``train.yaml`` + ``study.yaml``, plus the run's
overrides as ``key=value`` Python literals, e.g. ``lr=2e-4``), draws 3 batches of the run's own views of the real
CTs (``../shared/data/real``) and prints, for the teacher's AITD ([CLS]) and GITD (pooled) heads: the mean and
minimum pairwise cosine of the L2-normalised bottleneck outputs of different crops, the prototypes' mean pairwise
cosine and effective rank, and the spread of the logits that survives the batch centering. A uniform collapse
with full-rank prototypes and bottleneck cosines near 1 is every crop mapped to nearly one bottleneck point.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[3]


def main(run: str, epoch: str, *overrides: str) -> None:
    torch.set_num_threads(1)
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles/pretrain/configs/train.yaml"), str(REPO / "bundles/pretrain/configs/study.yaml")])
    parser.update({"dataset_dir": str(REPO.parent / "shared/data/real"), "output_dir": f"/tmp/head_geometry_{Path(run).name}",
                   "cache_workers": 1})
    for item in overrides:
        key, value = item.split("=", 1)
        parser[key] = eval(value)  # noqa: S307 (a literal from the command line)
    checkpoint = torch.load(Path(run, "models", f"checkpoint_{epoch}.pt"), map_location="cpu", weights_only=False)
    teacher = parser.get_parsed_content("network_def")
    teacher.load_state_dict(checkpoint["teacher"], strict=False)  # the teacher has no AMIP head
    teacher.eval()
    torch.manual_seed(0)
    rows: dict[str, list[torch.Tensor]] = {"aitd": [], "gitd": []}
    with torch.no_grad():
        for i, batch in enumerate(parser.get_parsed_content("train::dataloader")):
            encoded = teacher.encoder(torch.cat([batch["view_1"], batch["view_2"]]))
            for name, head, features in (("aitd", teacher.cls_head, encoded.cls), ("gitd", teacher.global_head, encoded.pooled)):
                if head is None:
                    continue
                x = F.batch_norm(features.float(), None, None, training=True, eps=1e-5) if head.input_norm == "batch" else features
                z = head.mlp(x).float()
                if getattr(head, "output_norm", "none") == "batch":
                    z = F.batch_norm(z, None, None, training=True, eps=1e-5)
                rows[name].append(F.normalize(z, dim=-1))
            if i >= 2:
                break
    for name, head in (("aitd", teacher.cls_head), ("gitd", teacher.global_head)):
        if not rows[name]:
            continue
        z = torch.cat(rows[name])
        prototypes = F.normalize(head.last_layer.weight, dim=-1)
        off = ~torch.eye(len(z), dtype=torch.bool)
        z_cos = (z @ z.T)[off]
        p_off = ~torch.eye(len(prototypes), dtype=torch.bool)
        p_cos = (prototypes @ prototypes.T)[p_off]
        singular = torch.linalg.svdvals(prototypes)
        rank = (singular.sum() ** 2 / (singular**2).sum()).item()
        logits = z @ prototypes.T
        spread = (logits - logits.mean(0, keepdim=True)).std().item()
        print(f"{name}: bottleneck cosine between crops mean {z_cos.mean():.3f} min {z_cos.min():.3f}; prototypes "
              f"pairwise cosine mean {p_cos.mean():.3f}, effective rank {rank:.1f} of {prototypes.shape[1]}; "
              f"centred logit spread {spread:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
