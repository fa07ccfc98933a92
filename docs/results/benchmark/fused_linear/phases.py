"""Where the DAGMaN step goes: the teacher's noisy pass, its clean pass up to the SA stage, the student's forward
and its forward+backward, each timed alone (median of 2 rounds after one warm-up round, one thread).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=oversize_threshold:1,background_thread:true,\
metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1 taskset -c 0 \
        python docs/results/benchmark/fused_linear/phases.py 96 48      # phases96.txt

Arguments: roi size, feature size (the rest: the benchmark's defaults, batch 2, two views).
"""

import math
import statistics
import sys
import time

import torch

from dagman_components.benchmark import BenchmarkConfig, _build_student, _views
from dagman_components.engines import make_teacher

torch.set_num_threads(1)
cfg = BenchmarkConfig(roi_size=int(sys.argv[1]), feature_size=int(sys.argv[2]))
student, _ = _build_student(cfg, semantic_attention=True)
student.train()
teacher = make_teacher(student)
views = _views(cfg, torch.device("cpu"))
images = torch.cat([views["view_1"], views["view_2"]])
n_tokens = math.prod(student.encoder.grid_size(images.shape[2:]))
mask = torch.zeros(images.shape[0], n_tokens, dtype=torch.bool)
mask[:, : int(0.7 * n_tokens)] = True


def teacher_noisy() -> None:
    with torch.no_grad():
        teacher.project(teacher.encode(images, mask), mask, reconstruct=False)


def teacher_clean_to_sa() -> None:
    with torch.no_grad():
        teacher.encoder(images, None, stop_after_sa=True)


def student_fwd():
    return student(images, mask)[1]


def student_fwd_bwd() -> None:
    heads = student_fwd()
    outputs = [heads.patch_logits, heads.cls_logits, heads.global_logits, heads.reconstruction]
    sum(t.float().mean() for t in outputs if t is not None).backward()
    student.zero_grad(set_to_none=True)


phases = {f.__name__: f for f in (teacher_noisy, teacher_clean_to_sa, student_fwd, student_fwd_bwd)}
times = {name: [] for name in phases}
for round_index in range(3):
    for name, phase in phases.items():
        start = time.perf_counter()
        phase()
        if round_index:
            times[name].append(time.perf_counter() - start)
for name, values in times.items():
    print(name, round(statistics.median(values), 3))
