"""How many windows the fast forward computes once per sample in a real DAGMaN step (``skip_mask_windows``).

Runs the benchmark's ``dagman`` step (a ``CoDistillationTrainer`` iteration: noisy teacher pass with 70 % patch
dropout, clean SATT pass, attention-guided student mask of 70 % with 10 % hints) and prints, per encoder pass and
block that skips (at least ``UNIFORM_WINDOW_MIN_FRACTION`` of its windows uniform), the fraction of windows whose tokens
all still hold the sample's mask token (the ones computed once per sample)::

    python docs/results/benchmark/mask_windows/window_fractions.py 96 12 3   # roi size, feature size, steps -> fractions96.txt
"""

import sys
from collections import defaultdict

import torch

import dagman_components.networks.fast_swin as fast_swin
from dagman_components.benchmark import BenchmarkConfig, trainer_step

torch.set_num_threads(1)
roi, feature, steps = (int(a) for a in sys.argv[1:4])
fractions: dict[tuple[bool, int, int], list[float]] = defaultdict(list)  # (student?, windows, block) -> per step


def mixed(block_module, x, n, mask, uniform):
    fractions[(torch.is_grad_enabled(), x.shape[1] // n, id(block_module))].append(float(uniform.float().mean()))
    return original_mixed(block_module, x, n, mask, uniform)


original_mixed = fast_swin._block_on_mixed_windows
fast_swin._block_on_mixed_windows = mixed
step = trainer_step(BenchmarkConfig(roi_size=roi, feature_size=feature), torch.device("cpu"), "dagman")
for _ in range(steps):
    step()
print(f"roi {roi}, F={feature}, {steps} steps: per block that skipped, the mean fraction of its windows computed once")
print("per sample (steps in which it skipped, of the steps run)")
for (grad, windows, _), values in fractions.items():  # in the order the blocks first ran
    who = "student (forward+backward)" if grad else "teacher (noisy pass)"
    print(f"{who:28s} {windows:5d} windows/sample: {sum(values) / len(values):.3f} ({len(values)} of {steps})")
