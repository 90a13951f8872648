"""InfoNCE / NT-Xent (Chen et al., 2020; StochCon paper, Equation 1), with negatives from every rank.

Shared by two papers (StochCon's SimCLR and StochCon, VCReg's SimCLR + VCReg of Table 4), hence in ``common``:
no paper package imports another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.distributed import gather_with_grad, rank, world_size


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> torch.Tensor:
    """NT-Xent over the 2N views of a batch of N pairs (StochCon Eq. 1).

    With v = z / ||z|| and sim(a, b) = v_a . v_b, for each of the 2N anchors i with positive p(i)
    (z1[k] <-> z2[k]):

        L = 1/(2N) sum_i -log( exp(sim(i, p(i)) / T) / sum_{k != i} exp(sim(i, k) / T) )

    the denominator running over all 2N views of the global batch except the anchor itself. Under
    data parallelism each rank scores its own anchors against the keys of every rank (gathered with
    gradient), and the mean over ranks that DDP takes makes it the loss of the global batch.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    keys1, keys2 = (gather_with_grad(z1), gather_with_grad(z2)) if gather else (z1, z2)
    total = keys1.shape[0]
    offset = rank() * n if gather and world_size() > 1 else 0
    anchors = torch.cat([z1, z2])                       # [2n, D]
    keys = torch.cat([keys1, keys2])                    # [2N, D]
    logits = anchors @ keys.t() / temperature           # [2n, 2N]
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + total])
    positive = torch.cat([local + total, local])
    logits[torch.arange(2 * n, device=z1.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def multicrop_info_nce(projections: list[torch.Tensor], num_global: int, temperature: float = 0.1,
                       gather: bool = True) -> torch.Tensor:
    """Multi-crop InfoNCE: every view is contrasted with every global view it is not.

    L = mean over the pairs (g, j), g a global view, j any other view, each unordered pair once, of
    ``info_nce(z_g, z_j)``. With two views this is ``info_nce(z_1, z_2)``.
    """
    pairs = [(g, j) for g in range(num_global) for j in range(g + 1, len(projections))]
    return torch.stack([info_nce(projections[g], projections[j], temperature, gather) for g, j in pairs]).mean()
