"""A/B of the CPU training attention's backward: recompute each chunk's softmax (the default) or keep it.

Times the benchmark's ``lower_bound`` step in one process, interleaving the two attention functions
round by round (the first round of each is dropped), and prints the median and minimum seconds:

    OMP_NUM_THREADS=1 python docs/results/benchmark/attention_backward_ab.py 64 12 lower_bound 8
    OMP_NUM_THREADS=1 python docs/results/benchmark/attention_backward_ab.py 96 48 lower_bound 4

"store" is the previous path: the same chunks through plain autograd, which keeps every chunk's weights.
"""

from __future__ import annotations

import sys
import time
import types

import torch

import dagman_components.networks.fast_swin as fast_swin
from dagman_components.benchmark import BenchmarkConfig, _make_step


class _Stored:
    """Drop-in for ``_RecomputedWindowAttention``: plain autograd over the chunks (weights kept)."""

    @staticmethod
    def apply(q, k, v, bias, mask, scale):
        return fast_swin._explicit(types.SimpleNamespace(scale=scale, attn_drop=torch.nn.Identity()), q, k, v, bias, mask)


def main(roi_size: int, feature_size: int, variant: str, rounds: int) -> None:
    torch.set_num_threads(1)
    recompute = fast_swin._RecomputedWindowAttention
    cfg = BenchmarkConfig(roi_size=roi_size, feature_size=feature_size, batch_size=2)
    step = _make_step(cfg, variant, cfg.torch_device())
    times: dict[str, list[float]] = {"store": [], "recompute": []}
    try:
        for _ in range(rounds):
            for name, impl in (("store", _Stored), ("recompute", recompute)):
                fast_swin._RecomputedWindowAttention = impl
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    finally:
        fast_swin._RecomputedWindowAttention = recompute
    for name, values in times.items():
        kept = sorted(values[1:])
        print(f"{name}: median {kept[len(kept) // 2]:.3f} s, min {kept[0]:.3f} s ({len(kept)} rounds)")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
