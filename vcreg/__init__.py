"""VCReg: variance-covariance regularisation of intermediate representations ("Variance-Covariance
Regularization Improves Representation Learning")."""

from vcreg.layer import NORMALIZATIONS, VCReg
from vcreg.placement import PLACEMENTS, VCRegLayerConfig, apply_vcreg, remove_layers

__all__ = ["NORMALIZATIONS", "PLACEMENTS", "VCReg", "VCRegLayerConfig", "apply_vcreg", "remove_layers"]
