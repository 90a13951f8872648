"""VCReg's losses (``vcreg.losses``) and the regularisers it is compared with, on examples small enough to check by
hand: eqs. 3-4 and eq. 7, DeCov, WLD-Reg's three variants, VICReg's three terms."""

import math

import pytest
import torch

from vcreg.losses import covariance_loss, decov_loss, smooth_l1, variance_loss, vicreg_loss, wldreg_loss


def test_losses_on_hand_checked_example():
    # rows (0, 0), (2, 1), (4, 5): means (2, 2); C = [[4, 5], [5, 7]] with 1/(n-1)
    h = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 5.0]], dtype=torch.float64)
    assert variance_loss(h * 0.25, eps=0.0).item() == pytest.approx(((1 - 0.5) + (1 - math.sqrt(7) / 4)) / 2)
    assert covariance_loss(h).item() == pytest.approx(2 * 25 / 2)
    assert covariance_loss(h, delta=2.0).item() == pytest.approx(2 * (2 * 2 * 5 - 4) / 2)
    assert smooth_l1(torch.tensor([0.5, -3.0], dtype=torch.float64), 1.0).tolist() == pytest.approx([0.25, 5.0])
    # DeCov normalises by n: C = [[8/3, 10/3], [10/3, 14/3]], loss = 1/2 * 2 * (10/3)^2
    assert decov_loss(h).item() == pytest.approx((10 / 3) ** 2)


def test_wldreg_loss_on_hand_checked_example():
    # units' outputs on two samples: (0, 1, 0) and (1, 1, 3); gamma = 1, s_uv = mean_j exp(-(h_ju - h_jv)^2)
    h = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 3.0]], dtype=torch.float64)
    e = math.exp
    s01, s02, s12 = (e(-1) + 1) / 2, (1 + e(-4)) / 2, (e(-1) + e(-4)) / 2
    determinant = 1 + 2 * s01 * s02 * s12 - s01 ** 2 - s02 ** 2 - s12 ** 2  # of [[1, s01, s02], ...]
    assert wldreg_loss(h, gamma=1.0, variant="direct").item() == pytest.approx(2 * (s01 + s02 + s12))
    assert wldreg_loss(h, gamma=1.0, variant="det").item() == pytest.approx(-determinant)
    assert wldreg_loss(h, gamma=1.0, variant="logdet").item() == pytest.approx(-math.log(determinant))
    # gamma scales the squared differences: gamma = 2 on h equals gamma = 1 on h * sqrt(2)
    assert wldreg_loss(h, 2.0).item() == pytest.approx(wldreg_loss(h * math.sqrt(2), 1.0).item())
    with pytest.raises(ValueError, match="variant"):
        wldreg_loss(h, 1.0, "trace")


@pytest.mark.parametrize("combine", ["mean", "sum"])
def test_vicreg_loss_on_hand_checked_example(combine):
    z1 = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 5.0]], dtype=torch.float64)
    z2 = z1 * 0.25
    out = vicreg_loss(z1, z2, variance_combine=combine)
    invariance = float(((z1 - z2) ** 2).mean())
    # z1's stds (2, sqrt 7) exceed 1: no hinge; z2's variances are 4/16 and 7/16
    v_z2 = ((1 - math.sqrt(4 / 16 + 1e-4)) + (1 - math.sqrt(7 / 16 + 1e-4))) / 2
    variance = v_z2 / 2 if combine == "mean" else v_z2  # the released code averages the two branches
    covariance = 2 * 25 / 2 + 2 * (25 / 256) / 2
    assert out["invariance"].item() == pytest.approx(invariance)
    assert out["variance"].item() == pytest.approx(variance)
    assert out["covariance"].item() == pytest.approx(covariance)
    assert out["loss"].item() == pytest.approx(25 * invariance + 25 * variance + covariance)
