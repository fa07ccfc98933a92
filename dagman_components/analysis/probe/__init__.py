"""
Frozen-feature evaluation of a pretrained encoder: a tumour-vs-tissue linear probe and an organ kNN.

Both read one feature vector per SA-stage token block (16^3 voxels at ``patch_size=2``,
``sa_stage=3``) of the frozen encoder and compare it, on the *same* blocks, with the same
architecture at random initialisation (``n_random_seeds`` seeds, mean +- std) and with four raw
intensity statistics per block. What counts is the comparison between these rows.

Data and preprocessing (as pretraining, :py:func:`~dagman_components.analysis.localization.localization_preprocessing`):
each CT and its mask are reoriented to RAS and resampled to ``spacing`` (2 mm; image bilinear, mask
nearest), the image is windowed ``hu_range`` (-1000..1000 HU) -> [0, 1]; then, like
:py:func:`~dagman_components.data.ct_preprocessing`, cropped to the body's bounding box (HU >
``body_hu`` plus 2 voxels) and zero-padded at the far end of each axis to a multiple of
``tile_size`` (64^3, the pretraining crop). The encoder sees one ``tile_size`` tile at a time
(eval mode, no gradients). ``tiling`` (:py:data:`TILINGS`) says which tiles **[choice]**: ``"per_block"``
(:py:data:`DEFAULT_TILING`), one tile per labelled block with the block at the same position
(:py:data:`PER_BLOCK_POSITION`, zero padding past the volume), or ``"grid"``, the padded volume cut on a
fixed grid and each tile that holds a labelled block read once (17 times less encoder work on ``sts/``).
With ``"grid"`` a block's position in its tile is a feature every encoder carries, and on tumour-centred
crops it predicts tumour blocks (the ``tile_position`` row); with it the study's pretrained encoders
beat their random init, with ``"per_block"`` they do not (docs/results/study.md, twelfth session).

Tumour cases: ``sts/<case>/CT_image.nii.gz`` + ``CT_mask.nii.gz`` by default; ``chest/<name>_ct.nii.gz`` +
``<name>_lesion.nii.gz`` on request (``tumour_sources``), although neither real chest lesion fills
half of any 32 mm block at 2 mm, so the chest CTs add tissue blocks only.

Block labels (tumour probe): a block is *tumour* when at least ``tumour_fraction`` (0.5) of its
voxels are tumour, *tissue* when none is tumour and at least ``body_fraction`` (0.5) are inside the
body (HU > ``body_hu``, -500, measured before windowing); every other block (tumour border, air) is
left out. Organ kNN: a block is labelled by the organ that fills at least ``organ_fraction`` (0.5)
of it; organs with fewer than ``min_blocks_per_organ`` (5) blocks are left out.

Features (``feature``, one of :py:data:`PROBE_FEATURES`; default :py:data:`DEFAULT_PROBE_FEATURE`, ``"multiscale"``):

- ``"tokens"``: ``EncoderOutput.tokens``, the layer-normalised SA-stage tokens before the SA blocks
  (8F values at ``sa_stage=3``);
- ``"sa_tokens"``: the patch tokens after the SA blocks (8F; encoders with semantic attention only);
- ``"multiscale"`` **[choice]**, the default: the five ``EncoderOutput.hidden_states`` (strides 2..32; with
  ``sa_inline`` the stride-16 map is the one after SA) brought to the token grid, finer maps
  average-pooled over each block and the stride-32 map trilinearly upsampled, concatenated
  (F + 2F + 4F + 8F + 16F = 31F values);
- ``"last_stage"``: the stride-32 map alone (16F values), trilinearly upsampled to the token grid: the
  representation the papers cluster organs with (SMART sec. IV-D: "image tokens produced after average
  pooling of the features from stage #4"), and the one GITD and AMIP train directly.

Scores:

- tumour probe: ``StandardScaler`` + ``LogisticRegression(class_weight="balanced", C)`` in
  ``n_folds`` (5) folds of ``StratifiedGroupKFold`` grouped by case (no case in both the training
  and the test part of a fold); ROC AUC and average precision of the pooled out-of-fold
  probabilities, and per fold;
- organ kNN: distance-weighted ``k`` (5) nearest neighbours, Euclidean on standardised features,
  ``folds`` (5)-fold accuracy (:py:func:`~dagman_components.analysis.clustering.knn_accuracy`), folds
  grouped by CT when the organ blocks come from 2 or more CTs. With one CT (``organs/example_ct``) the
  folds are stratified over its blocks: with ``"grid"`` tiles neighbouring blocks of one organ share a tile and its context,
  and the accuracy mostly measures that. The ``tile_identity`` reference row (:py:func:`tile_identity_knn`,
  a one-hot of the block's tile, no image information; grid tiling only) is that floor: 0.80 on ``organs/``, above the
  intensity statistics (0.74) and within 0.05 of every encoder, random or pretrained (docs/results/study.md,
  eleventh session).
- the ``location`` reference row: the tumour probe of the four intensity statistics and the block's place
  in its cropped case (:py:data:`LOCATION_FEATURES`), no encoder at all. The ``sts/`` crops are centred on
  their tumours, so the place alone gives AUC 0.963 and with the intensities 0.967, above every encoder
  measured, random or pretrained (0.92-0.95; docs/results/study.md, twelfth session): read an encoder's tumour AUC against this row, not only against intensity.
- both are cross-validated ``cv_repeats`` (5) times with fold seeds ``seed``, ``seed + 1``, ... and
  averaged **[choice]**: on the real data one split's tumour AUC moves by up to 0.01 and the 61-block
  organ kNN by up to 0.04 with the split, as much as the random-init seeds differ
  (docs/results/study.md, eighth session).

Preprocessed blocks are cached in memory (keyed by the files, their modification times and the
settings): :py:func:`prepare_probe_data` runs once per data set and process, and
:py:func:`evaluate_encoder` only runs the encoder on the cached tiles.

Modules: :py:mod:`~.blocks` (data preparation), :py:mod:`~.encoders` (which encoder is read),
:py:mod:`~.scores` (features, probe, kNN, references), :py:mod:`~.report` (``run_probe``, the command line).
Command line: ``python -m dagman_components.analysis.probe --encoder_path model.pt --data_dir DIR``.
"""

from dagman_components.analysis.probe.blocks import (
    DEFAULT_PREPROCESSING,
    DEFAULT_TILING,
    INTENSITY_STATISTICS,
    LOCATION_FEATURES,
    ORGAN_SOURCE,
    PER_BLOCK_POSITION,
    TILINGS,
    TUMOUR_SOURCES,
    ProbeBlocks,
    ProbeData,
    block_intensity_statistics,
    check_same_grid,
    label_organ_blocks,
    label_tumour_blocks,
    prepare_organ_blocks,
    prepare_probe_data,
    prepare_tumour_blocks,
    tumour_datalist,
)
from dagman_components.analysis.probe.encoders import (
    DEFAULT_ENCODER_KWARGS,
    build_encoder,
    encoder_kwargs_from_config,
    encoder_kwargs_from_encoder,
    preprocessing_from_config,
    resolve_encoder_kwargs,
)
from dagman_components.analysis.probe.report import format_probe_table, main, run_probe
from dagman_components.analysis.probe.scores import (
    DEFAULT_PROBE_FEATURE,
    PROBE_FEATURES,
    block_features,
    clear_probe_cache,
    evaluate_encoder,
    grouped_folds,
    linear_probe,
    organ_knn,
    probe_baselines,
    reference_scores,
    tile_identity_knn,
    tile_position_probe,
)

__all__ = [
    "PROBE_FEATURES",
    "DEFAULT_PROBE_FEATURE",
    "DEFAULT_ENCODER_KWARGS",
    "DEFAULT_PREPROCESSING",
    "INTENSITY_STATISTICS",
    "LOCATION_FEATURES",
    "TILINGS",
    "DEFAULT_TILING",
    "PER_BLOCK_POSITION",
    "ORGAN_SOURCE",
    "TUMOUR_SOURCES",
    "ProbeBlocks",
    "ProbeData",
    "tumour_datalist",
    "check_same_grid",
    "label_tumour_blocks",
    "label_organ_blocks",
    "block_intensity_statistics",
    "prepare_tumour_blocks",
    "prepare_organ_blocks",
    "prepare_probe_data",
    "clear_probe_cache",
    "block_features",
    "grouped_folds",
    "linear_probe",
    "organ_knn",
    "tile_identity_knn",
    "tile_position_probe",
    "evaluate_encoder",
    "probe_baselines",
    "reference_scores",
    "encoder_kwargs_from_config",
    "preprocessing_from_config",
    "encoder_kwargs_from_encoder",
    "resolve_encoder_kwargs",
    "build_encoder",
    "format_probe_table",
    "run_probe",
    "main",
]
