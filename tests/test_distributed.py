"""Two gloo processes on the CPU: gathered losses give exactly the single-process gradients."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.distributed import all_reduce_mean_with_grad, gather_with_grad
from common.info_nce import info_nce


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_loss(x1, x2, w):
    """A loss that needs the global batch: InfoNCE plus a statistic of the all-reduced mean."""
    z1, z2 = x1 @ w, x2 @ w
    mean = all_reduce_mean_with_grad(z1.mean(dim=0))
    return info_nce(z1, z2, 0.2) + (mean ** 2).sum()


def _worker(rank, world, port, x1, x2, w0, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = x1.shape[0] // world
    w = w0.clone().requires_grad_(True)
    loss = _global_loss(x1[rank * n:(rank + 1) * n], x2[rank * n:(rank + 1) * n], w)
    loss.backward()
    grad = w.grad.clone()
    dist.all_reduce(grad)          # what DDP does: average parameter gradients over ranks
    grad /= world
    gathered = gather_with_grad(torch.full((2, 1), float(rank)))
    losses = [torch.zeros(1, dtype=loss.dtype) for _ in range(world)]
    dist.all_gather(losses, loss.detach().reshape(1))
    torch.save((rank, grad, torch.stack(losses).mean(), gathered), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gradient_equals_single_process(tmp_path):
    torch.manual_seed(0)
    # float64: the two ranks' halves are summed in another order than the single process's batch, a relative
    # difference of a few units of 2^-53; any real difference (a statistic per rank) is of order 1
    x1, x2, w0 = (torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64),
                  torch.randn(6, 4, dtype=torch.float64))
    w = w0.clone().requires_grad_(True)
    single = _global_loss(x1, x2, w)
    single.backward()

    mp.spawn(_worker, args=(2, _free_port(), x1, x2, w0, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, grad, loss, gathered in results:
        torch.testing.assert_close(grad, w.grad, rtol=1e-12, atol=1e-14, msg=f"rank {rank} gradient differs")
        assert float(loss) == pytest.approx(float(single.detach()), rel=1e-12)
        assert gathered.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_single_process_helpers_are_identities():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x and all_reduce_mean_with_grad(x) is x
