"""QK^T of stage 1 at 96^3 / F=48: per-chunk contiguous copies (current) vs per-head strided bmm (results.txt)."""
import time

import torch

torch.set_num_threads(1)
w, n, heads, hd = 6912, 64, 4, 12
C = heads * hd
qkv = torch.randn(w, n, 3 * C)
qv = qkv.view(w, n, 3, heads, hd)
def t(f, r=5):
    f(); s = time.perf_counter()
    for _ in range(r): f()
    return (time.perf_counter() - s) / r
chunk = 64
def current():
    q, k, v = qv.permute(2, 0, 3, 1, 4).unbind(0)
    for s in range(0, w, chunk):
        qc, kc = q[s:s+chunk].contiguous(), k[s:s+chunk].contiguous()
        qc @ kc.transpose(-2, -1)
def strided():
    for s in range(0, w, chunk):
        for h in range(heads):
            qh = qkv[s:s+chunk, :, h*hd:(h+1)*hd]
            kh = qkv[s:s+chunk, :, C + h*hd: C + (h+1)*hd]
            torch.bmm(qh, kh.transpose(1, 2))
def noncopy_4d():
    q, k, v = qv.permute(2, 0, 3, 1, 4).unbind(0)
    for s in range(0, w, chunk):
        q[s:s+chunk] @ k[s:s+chunk].transpose(-2, -1)
print("current", t(current), "strided per head", t(strided), "4d matmul", t(noncopy_4d))
