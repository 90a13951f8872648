import math

import torch
import torch.nn.functional as F

from common.info_nce import info_nce, multicrop_info_nce


def direct_nt_xent(z1, z2, temperature):
    """Equation 1 written out anchor by anchor."""
    v = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = v.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        positive = i + n if i < n else i - n
        sims = [float(v[i] @ v[k]) / temperature for k in range(n2)]
        denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[positive]) / denominator)
    return total / n2


# Every comparison is in float64 (the loss, the anchor-by-anchor formula and Python's floats differ only in the
# order of the operations): the ~1e-15 rounding of a loss of size ~1 is far inside 1e-12.
F64 = torch.float64


def test_info_nce_equals_the_formula_on_a_hand_checked_pair():
    # Two pairs of orthogonal unit vectors: each anchor's positive has sim 1, the other two 0.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    z2 = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=F64)
    t = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2 * math.exp(0.0)))
    assert abs(float(info_nce(z1, z2, t)) - expected) < 1e-12
    assert abs(direct_nt_xent(z1, z2, t) - expected) < 1e-12


def test_info_nce_equals_the_direct_formula_on_random_data():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
    for t in (0.1, 0.5, 1.0):
        assert abs(float(info_nce(z1, z2, t)) - direct_nt_xent(z1, z2, t)) < 1e-12


def test_info_nce_gradient_matches_finite_differences():
    torch.manual_seed(1)
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.2), (z1, z2))


def test_multicrop_reduces_to_info_nce_and_averages_pairs():
    torch.manual_seed(2)
    views = [torch.randn(5, 4, dtype=F64) for _ in range(4)]
    assert abs(float(multicrop_info_nce(views[:2], 2, 0.3)) - float(info_nce(views[0], views[1], 0.3))) < 1e-12
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    expected = sum(float(info_nce(views[a], views[b], 0.3)) for a, b in pairs) / len(pairs)
    assert abs(float(multicrop_info_nce(views, 2, 0.3)) - expected) < 1e-12
