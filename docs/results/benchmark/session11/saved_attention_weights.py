"""A/B: recomputed attention weights (current) vs weights kept for the backward, student fwd+bwd (results.txt).

    python docs/results/benchmark/session11/saved_attention_weights.py 96 48
"""
import math
import statistics
import sys
import time

import torch

import dagman_components.networks.fast_swin as fs
from dagman_components.benchmark import BenchmarkConfig, _build_student, _views

torch.set_num_threads(1)

class Saved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, heads, bias, mask, scale):
        q, k, v = fs._split_heads(qkv, heads)
        bw, heads, n, hd = q.shape
        chunk, cm, plan = fs._chunk_plan(bw, heads, n, mask)
        out = v.new_empty((bw, n, heads * hd))
        ws = []
        for start, off in plan:
            stop = min(start + chunk, bw)
            w = fs._chunk_weights(q[start:stop], k[start:stop], bias, cm, off, scale)
            ws.append(w)
            out[start:stop] = fs._merge_heads(w.to(v.dtype) @ v[start:stop])
        ctx.save_for_backward(qkv, bias, *ws)
        ctx.scale, ctx.heads, ctx.chunk = scale, heads, chunk
        return out
    @staticmethod
    def backward(ctx, grad_out):
        qkv, bias, *ws = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        q, k, v = fs._split_heads(qkv, ctx.heads)
        bw, heads, n, hd = q.shape
        grad_qkv = qkv.new_empty(qkv.shape)
        gq, gk, gv = fs._split_heads(grad_qkv, heads)
        gb = torch.zeros_like(bias, dtype=torch.float32)
        gh = grad_out.view(bw, n, heads, hd).transpose(1, 2)
        for i, weights in enumerate(ws):
            start = i * chunk; stop = min(start + chunk, bw)
            qc, kc, vc = q[start:stop].contiguous(), k[start:stop].contiguous(), v[start:stop].contiguous()
            go = gh[start:stop].to(v.dtype).contiguous()
            gv[start:stop] = weights.to(v.dtype).transpose(-2, -1) @ go
            gw = (go @ vc.transpose(-2, -1)).float()
            gs = torch._softmax_backward_data(gw, weights, -1, weights.dtype)
            gb += gs.sum(dim=0)
            gs = gs.to(q.dtype)
            gq[start:stop] = (gs @ kc) * scale
            gk[start:stop] = gs.transpose(-2, -1) @ (qc * scale)
        return grad_qkv, None, gb.to(bias.dtype), None, None

cfg = BenchmarkConfig(roi_size=int(sys.argv[1]), feature_size=int(sys.argv[2]))
student, _ = _build_student(cfg, semantic_attention=True); student.train()
views = _views(cfg, torch.device("cpu"))
images = torch.cat([views["view_1"], views["view_2"]])
n_tokens = math.prod(student.encoder.grid_size(images.shape[2:]))
mask = torch.zeros(images.shape[0], n_tokens, dtype=torch.bool); mask[:, : int(0.7 * n_tokens)] = True
def fb():
    heads = student(images, mask)[1]
    outputs = [heads.patch_logits, heads.cls_logits, heads.global_logits, heads.reconstruction]
    sum(t.float().mean() for t in outputs if t is not None).backward()
orig = fs._RecomputedWindowAttention
times = {"recompute": [], "saved": []}
for r in range(4):
    for name, cls in (("recompute", orig), ("saved", Saved)):
        fs._RecomputedWindowAttention = cls
        t = time.perf_counter(); fb(); dt = time.perf_counter() - t
        if r: times[name].append(dt)
        student.zero_grad(set_to_none=True)
print({k: round(statistics.median(v), 3) for k, v in times.items()}, {k: [round(x,3) for x in v] for k, v in times.items()})
