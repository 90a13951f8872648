"""vcreg.analysis.gradient_share: each VCReg layer's added gradient against the one arriving from above."""

import json

import torch
import torch.nn.functional as F
from torch import nn
from trainer_runs import write_idx_fashion_mnist

from vcreg import VCReg
from vcreg.analysis.gradient_share import gradient_shares, main
from vcreg.losses import covariance_loss, variance_loss


class LinearThenVCReg(nn.Module):
    """A supervised method in miniature: linear features, a VCReg layer, a linear classifier."""

    def __init__(self, alpha: float, beta: float):
        super().__init__()
        self.features, self.vcreg, self.head = nn.Linear(6, 5), VCReg(alpha, beta), nn.Linear(5, 3)

    def forward(self, views, labels):
        return {"loss": F.cross_entropy(self.head(self.vcreg(self.features(views[0]))), labels)}


def test_added_and_incoming_gradients_match_autograd_of_the_loss_and_of_algorithm_1s_regulariser():
    torch.manual_seed(0)
    alpha, beta = 0.7, 0.3
    method = LinearThenVCReg(alpha, beta).double()
    with torch.no_grad():
        # three channels with std under 1 (the hinge pushes them), two above (it leaves them alone)
        method.features.weight.mul_(torch.tensor([0.2, 0.2, 0.2, 5.0, 5.0], dtype=torch.float64)[:, None])
    images, labels = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    [layer] = gradient_shares(method, images.clone(), labels)

    h = method.features(images).detach().requires_grad_(True)
    incoming, = torch.autograd.grad(F.cross_entropy(method.head(h), labels), h)
    n = h.shape[0]
    # Algorithm 1 adds alpha * grad(l_var) + beta * (n - 1) * grad(l_cov) (eqs. 3 and 4; vcreg.layer's docstring)
    added, = torch.autograd.grad(alpha * variance_loss(h) + beta * (n - 1) * covariance_loss(h), h)
    assert (h.var(0) < 1).tolist() == [True, True, True, False, False]
    assert layer["layer"] == "vcreg" and layer["shape"] == [40, 5]
    assert abs(layer["incoming_norm"] - incoming.norm().item()) < 1e-12
    assert abs(layer["added_norm"] - added.norm().item()) < 1e-12
    assert abs(layer["share"] - added.norm().item() / incoming.norm().item()) < 1e-12


def test_command_on_a_config_and_its_bad_input(tmp_path, capsys):
    root = write_idx_fashion_mnist(tmp_path / "data", n_train=64, n_test=16)
    config = ["--config", "vcreg/configs/fashion_mnist_vcreg.yaml", f"data.root={root}", "data.subset=null",
              "backbone.width=4"]
    out = tmp_path / "share.json"
    assert main([*config, "vcreg.enabled=true", "--images", "20", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    layers = result["init"]
    assert result["images"] == 20 and len(layers) == 8  # one VCReg layer per conv-BN-ReLU unit
    assert layers[0]["shape"] == [20, 4, 28, 28] and layers[-1]["shape"][:2] == [20, 32]
    assert all(layer["added_norm"] > 0 and layer["incoming_norm"] > 0 for layer in layers)
    capsys.readouterr()
    assert main([*config, "vcreg.enabled=false", "--output", str(out)]) == 2
    assert "no VCReg layer" in capsys.readouterr().err
    assert main([*config, "--at", "end", "--output", str(out)]) == 2  # a config has no trained weights
