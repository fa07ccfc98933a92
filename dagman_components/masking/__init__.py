"""Token masks for masked image modeling on the SA-stage token grid, and the masking strategies of the trainer.

All masks are boolean (B, N) tensors over the flattened (d, h, w) token grid with True = masked
(or, for the teacher, dropped). One token covers ``token_stride``^3 voxels (16^3 at stage 3).

- :py:mod:`.attention_guided`: DAGMaN/SMART and AttMask: mask the top ``mask_ratio`` tokens by SATT, keeping
  ``hint_ratio`` of them visible as hints (strategies ``attention_high``, ``attention_low``).
- :py:mod:`.random_tokens`: SMIT (uniform random tokens, strategy ``random``) and :py:func:`patch_dropout`,
  the noisy teacher's input corruption (Liu et al., PatchDropout).
- :py:mod:`.blockwise`: BEiT/iBOT blockwise masking, in 3D (strategy ``block``).
- :py:mod:`.base`: :py:class:`MaskingStrategy` and the registry (:py:func:`build_masking`).
- :py:mod:`.tokens`: upsampling a token mask to voxels.
"""

from .base import MASKING_STRATEGIES, MaskingStrategy, build_masking, register_masking
from .tokens import token_mask_to_voxels, upsample_token_mask

# isort: off
# the strategy modules register themselves on import, in this order (the order of MASKING_STRATEGIES, which
# error messages list); a new strategy adds its import here
from .attention_guided import AttentionGuidedMasking, attention_guided_mask
from .random_tokens import RandomMasking, patch_dropout, random_mask
from .blockwise import BlockMasking, block_mask
# isort: on

__all__ = [
    "MASKING_STRATEGIES",
    "AttentionGuidedMasking",
    "BlockMasking",
    "MaskingStrategy",
    "RandomMasking",
    "attention_guided_mask",
    "block_mask",
    "build_masking",
    "patch_dropout",
    "random_mask",
    "register_masking",
    "token_mask_to_voxels",
    "upsample_token_mask",
]
