"""The DINO center is all-reduced across processes (gloo, 2 ranks on CPU)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dagman_components.losses import DistillationCE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ce = DistillationCE(2, center_momentum=0.5)
    # rank 0 sees one sample, rank 1 three: the global mean weights samples, not ranks
    logits = torch.tensor([[4.0, 0.0]]) if rank == 0 else torch.tensor([[0.0, 4.0]] * 3)
    ce.update_center(logits)
    results[rank] = ce.center.clone()
    dist.destroy_process_group()


def test_center_is_the_mean_over_all_ranks():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    expected = 0.5 * torch.tensor([[1.0, 3.0]])
    assert torch.allclose(results[0], expected) and torch.allclose(results[1], expected)
