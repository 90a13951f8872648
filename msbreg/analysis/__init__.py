"""MSBReg analyses: the collapse curve of training runs (``python -m msbreg.analysis.collapse_curve``) and the
alignment and uniformity of Wang & Isola, supplementary Table 3 (``python -m msbreg.analysis.alignment_uniformity``).
"""
