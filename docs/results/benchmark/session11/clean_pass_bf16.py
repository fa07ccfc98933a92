"""The clean SATT pass at fp32 and under bf16 autocast (results.txt): python clean_pass_bf16.py 96 48."""
import sys
import time

import torch

from dagman_components.benchmark import BenchmarkConfig, _build_student, _views
from dagman_components.engines import make_teacher

torch.set_num_threads(1)
cfg = BenchmarkConfig(roi_size=int(sys.argv[1]), feature_size=int(sys.argv[2]))
student, _ = _build_student(cfg, semantic_attention=True); student.train()
teacher = make_teacher(student)
views = _views(cfg, torch.device("cpu"))
images = torch.cat([views["view_1"], views["view_2"]])
def clean(dtype):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        return teacher.encoder(images, None, stop_after_sa=True).satt
ref = clean(None)
for name, dt in (("fp32", None), ("bf16", torch.bfloat16)):
    ts = []
    for _ in range(3):
        t = time.perf_counter(); s = clean(dt); ts.append(time.perf_counter() - t)
    print(name, [round(x, 3) for x in ts], tuple(s.shape), float((s.float() - ref.float()).abs().max()))
