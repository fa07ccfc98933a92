"""A/B of the fused linear in one process: the same step with oneDNN's fused linear on and off, rounds interleaved.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=oversize_threshold:1,background_thread:true,\
metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1 OMP_NUM_THREADS=1 taskset -c 1 \
        python docs/results/benchmark/fused_linear/ab.py 96 48 dagman 3      # ab_roi96.txt
    ... python docs/results/benchmark/fused_linear/ab.py 64 12 dagman 8      # ab_default.txt

Arguments: roi size, feature size, variant (``lower_bound`` or a trainer method: ``dagman``, ``smit``, ...), rounds.
"Off" raises :data:`~dagman_components.networks.fused_linear.FUSED_LINEAR_MIN_ROWS` so that every linear runs ``F.linear``.
"""

import statistics
import sys
import time

import torch

import dagman_components.networks.fused_linear as fused_linear
from dagman_components.benchmark import BenchmarkConfig, lower_bound_step, trainer_step

torch.set_num_threads(1)
roi, feature_size, variant, rounds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cfg = BenchmarkConfig(roi_size=roi, feature_size=feature_size)
device = torch.device("cpu")
step = lower_bound_step(cfg, device) if variant == "lower_bound" else trainer_step(cfg, device, variant)
default_rows = fused_linear.FUSED_LINEAR_MIN_ROWS
times = {"fused": [], "plain": []}
for round_index in range(rounds + 1):  # round 0 warms up both
    for mode in ("fused", "plain"):
        fused_linear.FUSED_LINEAR_MIN_ROWS = default_rows if mode == "fused" else 10**12
        start = time.perf_counter()
        step()
        if round_index:
            times[mode].append(time.perf_counter() - start)
for mode, values in times.items():
    print(mode, [round(x, 3) for x in values], "median", round(statistics.median(values), 3))
print("ratio", statistics.median(times["fused"]) / statistics.median(times["plain"]))
