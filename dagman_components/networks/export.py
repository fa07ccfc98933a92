"""
Export a pretrained encoder's Swin weights for ``monai.networks.nets.SwinUNETR`` users.

The pretrain bundle's ``models/model.pt`` is an ``SASwinEncoder`` state dict; its ``swinViT.*`` entries use
MONAI's key names. This module writes them to a file that loads into ``SwinUNETR`` with no missing
``swinViT`` key and no unexpected key, after checking exactly that on a ``SwinUNETR`` built from the
architecture read off the weights, and prints the matching ``SwinUNETR(...)`` arguments.

Command line::

    python -m dagman_components.networks.export bundles/pretrain/models/model.pt \
        bundles/pretrain/models/swin_unetr_encoder.pt

then, in the user's code::

    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 8, 2),
                      num_heads=(4, 4, 8, 16), window_size=4, patch_norm=True)
    model.load_state_dict(torch.load("swin_unetr_encoder.pt"), strict=False)   # decoder keys stay missing

``--prefix ""`` writes the keys without ``swinViT.``, for ``model.swinViT.load_state_dict(torch.load(f))``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import SwinUNETR

from dagman_components.networks.sa_swin import read_encoder_file, swin_unetr_state_dict

__all__ = ["export_swin_unetr_weights", "swin_unetr_arguments"]

logger = logging.getLogger(__name__)

_SWIN = "swinViT."


def swin_unetr_arguments(swin_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ``SwinUNETR`` constructor arguments whose ``swinViT`` has exactly the keys and shapes of ``swin_state``.

    Read off the weights: ``in_channels``, ``feature_size`` and ``patch_size`` from the patch embedding
    (F, in, p, p, p); ``depths`` from the block indices per stage; ``num_heads`` and ``window_size`` from
    each stage's relative position bias table ((2w - 1)^3, heads); ``mlp_ratio`` from the first MLP;
    ``qkv_bias`` and ``patch_norm`` from the presence of their weights.

    Args:
        swin_state: ``swinViT.*`` entries, e.g. from :func:`dagman_components.networks.swin_unetr_state_dict`.

    Raises:
        ValueError: a key the architecture cannot be read from is missing (the key is named).
    """

    def need(key: str) -> torch.Tensor:
        if _SWIN + key not in swin_state:
            raise ValueError(f"not a Swin encoder state dict: no '{_SWIN + key}' (keys start with {sorted(swin_state)[:3]}).")
        return swin_state[_SWIN + key]

    embed = need("patch_embed.proj.weight")
    depths, num_heads, window = [], [], None
    for stage in range(1, 5):
        pattern = re.compile(rf"^{re.escape(_SWIN)}layers{stage}\.0\.blocks\.(\d+)\.")
        blocks = {int(m.group(1)) for k in swin_state if (m := pattern.match(k))}
        if not blocks:
            raise ValueError(f"not a 4-stage Swin encoder state dict: no block of stage {stage} ('{_SWIN}layers{stage}.0.blocks.*').")
        depths.append(max(blocks) + 1)
        table = need(f"layers{stage}.0.blocks.0.attn.relative_position_bias_table")
        num_heads.append(int(table.shape[1]))
        window = (round(table.shape[0] ** (1 / 3)) + 1) // 2
    mlp = need("layers1.0.blocks.0.mlp.linear1.weight")
    return {
        "in_channels": int(embed.shape[1]),
        "feature_size": int(embed.shape[0]),
        "patch_size": int(embed.shape[2]),
        "depths": tuple(depths),
        "num_heads": tuple(num_heads),
        "window_size": int(window),
        "mlp_ratio": float(mlp.shape[0] / mlp.shape[1]),
        "qkv_bias": _SWIN + "layers1.0.blocks.0.attn.qkv.bias" in swin_state,
        "patch_norm": _SWIN + "patch_embed.norm.weight" in swin_state,
    }


def export_swin_unetr_weights(
    encoder_path: str | Path, output_path: str | Path, prefix: str = _SWIN, out_channels: int = 2
) -> dict[str, Any]:
    """Write the Swin weights of a pretrained encoder checkpoint for ``SwinUNETR``, after checking they load.

    Args:
        encoder_path: the pretrain bundle's ``models/model.pt`` (see :func:`read_encoder_file`: the self-describing
            file, or an ``SASwinEncoder`` state dict, optionally under ``"model"``/``"encoder"``/``"state_dict"``/``"student"``).
        output_path: the file to write (a CPU state dict; parent folders are created).
        prefix: key prefix of the written entries: ``"swinViT."`` (default) for
            ``SwinUNETR.load_state_dict(..., strict=False)``, ``""`` for ``SwinUNETR.swinViT.load_state_dict(...)``.
        out_channels: output channels of the ``SwinUNETR`` built for the check (does not affect the file). Default 2.

    Returns:
        the ``SwinUNETR`` arguments the weights need (see :func:`swin_unetr_arguments`), also logged.

    Raises:
        FileNotFoundError: ``encoder_path`` missing.
        ValueError: not a Swin encoder, or the weights do not load into ``SwinUNETR`` (keys named).
    """
    encoder_path, output_path = Path(encoder_path), Path(output_path)
    _, state = read_encoder_file(encoder_path)  # the self-describing file or a bare state dict; errors name the file
    swin_state = {k: v.detach().cpu().clone() for k, v in swin_unetr_state_dict(state).items()}
    arguments = swin_unetr_arguments(swin_state)
    # the guarantee users rely on, checked on the real class: every swinViT key matched, nothing unexpected
    model = SwinUNETR(out_channels=out_channels, **arguments)
    incompatible = model.load_state_dict(swin_state, strict=False)
    missing_swin = [k for k in incompatible.missing_keys if k.startswith(_SWIN)]
    if missing_swin or incompatible.unexpected_keys:
        raise ValueError(
            f"{encoder_path}: the Swin weights do not load into SwinUNETR({arguments}): missing swinViT keys "
            f"{missing_swin[:8]}, unexpected keys {incompatible.unexpected_keys[:8]}."
        )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k[len(_SWIN):]: v for k, v in swin_state.items()}, output_path)
    call = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    logger.info(f"wrote {len(swin_state)} Swin tensors to {output_path}; build SwinUNETR({call}, out_channels=...)")
    return arguments


def _main(encoder_path: str, output_path: str, prefix: str = _SWIN, out_channels: int = 2) -> None:
    """Command-line entry: export and log, printing nothing else (fire would page a returned dict)."""
    export_swin_unetr_weights(encoder_path, output_path, prefix=prefix, out_channels=out_channels)


if __name__ == "__main__":
    import fire

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire(_main)
