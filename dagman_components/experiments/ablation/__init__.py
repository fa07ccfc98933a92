"""
The ablation suite: does attention-guided masking with a noisy teacher beat random masking here?

``python -m dagman_components.experiments ablation --seeds 3`` pretrains every variant of :py:data:`VARIANTS`
for every seed at ONE budget (:py:class:`AblationBudget`, fixed before any result was seen: the same
data, crop size, batch size and number of iterations for every variant), then evaluates each encoder:

1. ``nodule_lp`` / ``nodule_ft``: malignancy of the phantom nodules (``generate_nodule_dataset``): linear probe
   (frozen features + logistic regression) and fine-tuning (the ``nodule_classification`` bundle), AUC on
   the held-out fold of a fixed 3-fold patient-grouped split, with 100 % and 25 % of the training fold;
2. ``organs_phantom`` / ``organs_real``: organ clustering of frozen features (``analyze_clusters``):
   intra/inter-cluster distances, kNN accuracy, UMAP plot; phantom organs and crops of the real CT in
   ``<real_data>/organs``;
3. ``localization``: zero-shot localization Dice of SATT on the real tumours of ``<real_data>/sts`` and
   ``<real_data>/chest``, next to the trivial baselines of ``zero_shot_localization``;
4. ``segmentation``: few-shot tumour segmentation Dice on ``<real_data>/sts`` (the ``segmentation`` bundle
   fine-tuned on a fixed handful of cases, tested on the others);
5. ``head_diversity``: attention head diversity per stage (``compute_head_diversity``).

How: pretraining and the two fine-tuning tasks run the bundles' own configs through
``monai.bundle.ConfigWorkflow`` with overrides (the same switches a user passes on the command line), so the
suite measures exactly what a user of the bundles gets; the frozen-encoder analyses call the package's
functions. Every (variant, seed, task) result is a JSON file in ``work_dir``; ``--resume`` skips those that
exist for the same budget, so an interrupted suite continues where it stopped (an interrupted pretraining
continues from its last checkpoint). ``write_report`` aggregates mean +- std over seeds into
``<output_dir>/ablation.md``, ``ablation.csv``, ``ablation.json`` and ``ablation_*.png``.

Evaluation phantoms are generated with another seed than the pretraining phantoms, so no evaluation
volume was seen in pretraining. The real CTs, when present, are pretraining data too (unlabelled, as the
papers pretrain on unlabelled CT); their masks are only used by the evaluations.

The package, by concern (each module imports only those above it in this list):

- :py:mod:`.variants`: the variants and groups (pretrain-bundle overrides, as data) and the fixed budget;
- :py:mod:`.cache`: the work-dir layout and the per-unit JSON cache;
- :py:mod:`.pretraining`: pretraining through the bundle, encoder drift;
- :py:mod:`.tasks`: the seven evaluations;
- :py:mod:`.runner`: the suite (:py:func:`run_ablation`);
- :py:mod:`.statistics`: the metrics table, mean +- std over seeds, comparisons;
- :py:mod:`.plots` and :py:mod:`.report`: figures, ``ablation.md`` / ``.csv`` / ``.json``;
- :py:mod:`.cli`: the command line (:py:func:`ablation_main`).

"""

# the package re-exports every module's public names (each module's __all__), so callers import from here
from . import cache, cli, plots, pretraining, report, runner, statistics, tasks, variants
from .cache import *  # noqa: F403
from .cli import *  # noqa: F403
from .plots import *  # noqa: F403
from .pretraining import *  # noqa: F403
from .report import *  # noqa: F403
from .runner import *  # noqa: F403
from .statistics import *  # noqa: F403
from .tasks import *  # noqa: F403
from .variants import *  # noqa: F403

__all__ = [
    *variants.__all__,
    *cache.__all__,
    *pretraining.__all__,
    *tasks.__all__,
    *runner.__all__,
    *statistics.__all__,
    *plots.__all__,
    *report.__all__,
    *cli.__all__,
]
