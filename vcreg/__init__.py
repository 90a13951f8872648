"""VCReg: variance-covariance regularisation of intermediate representations (/work/shared/papers/vcreg.md)."""

from vcreg.layer import VCReg, attach_grad_scaler
from vcreg.placement import PLACEMENTS, apply_vcreg, remove_layers

__all__ = ["PLACEMENTS", "VCReg", "apply_vcreg", "attach_grad_scaler", "remove_layers"]
