"""Token masks on the voxel grid."""

import torch

from dagman_components.masking import token_mask_to_voxels, upsample_token_mask


def test_upsampling_to_patches_and_voxels():
    mask = torch.tensor([[True, False, False, False, False, False, False, True]])
    up = upsample_token_mask(mask, (2, 2, 2), 3)
    assert up.shape == (1, 6, 6, 6)
    assert up[0, :3, :3, :3].all() and up[0, 3:, 3:, 3:].all() and up.sum() == 2 * 27
    voxels = token_mask_to_voxels(mask, (2, 2, 2), 16)
    assert voxels.shape == (1, 1, 32, 32, 32) and voxels.sum() == 2 * 16**3
