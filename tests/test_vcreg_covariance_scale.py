"""vcreg.analysis.covariance_scale: the quantile of |C_ij| at a network's VCReg positions (eq. 7's delta rule)."""

import json

import numpy as np
import torch
from trainer_runs import write_idx_fashion_mnist

from common.backbones import SmallConvNet
from vcreg.analysis.covariance_scale import covariance_scale, main


def test_quantile_of_the_off_diagonal_covariances_at_every_block():
    """Against the covariances written out from the eight ReLU outputs of the small CNN, in float64 (the same
    sums in another order: relative error below n 2^-53, n = 8 x 16 x 16 rows at most, so 1e-10 is ample);
    the probes leave the network as it was."""
    torch.manual_seed(0)
    backbone = SmallConvNet(1, width=4).double()
    keys = list(backbone.state_dict())
    images = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    outputs = []
    handles = [m.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
               for m in backbone.features if isinstance(m, torch.nn.ReLU)]
    result = covariance_scale(backbone, "blocks", images, 0.9)
    for handle in handles:
        handle.remove()
    assert len(outputs) == len(result["positions"]) == 8
    values = []
    for out in outputs:
        rows = out.movedim(1, -1).reshape(-1, out.shape[1])
        rows = rows - rows.mean(0)
        c = (rows.T @ rows / (rows.shape[0] - 1)).numpy()
        values.append(np.abs(c[~np.eye(c.shape[0], dtype=bool)]))
    expected = [float(np.quantile(v, 0.9)) for v in values]
    assert np.allclose(list(result["positions"].values()), expected, rtol=1e-10, atol=0)
    assert abs(result["pooled"] - float(np.quantile(np.concatenate(values), 0.9))) < 1e-10 * result["pooled"]
    assert list(backbone.state_dict()) == keys and not any(hasattr(m, "vcreg") for m in backbone.modules())


def test_command_on_a_config_and_its_bad_input(tmp_path, capsys):
    root = write_idx_fashion_mnist(tmp_path / "data", n_train=64, n_test=16)
    config = ["--config", "vcreg/configs/fashion_mnist_vcreg.yaml", f"data.root={root}", "data.subset=null",
              "backbone.width=4"]
    assert main([*config, "--images", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 20 and len(result["positions"]) == 8 and result["pooled"] > 0
    assert main([*config, "--quantile", "2"]) == 2
    assert main([*config, "vcreg.placement=downsample"]) == 2  # the small CNN has no downsampling layer
    assert "downsamples inside its blocks" in capsys.readouterr().err
