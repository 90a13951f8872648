"""MSBReg analyses: the collapse curve of training runs (``python -m msbreg.analysis.collapse_curve``), the
alignment and uniformity of Wang & Isola, supplementary Table 3 (``python -m msbreg.analysis.alignment_uniformity``),
and the geometry of a run's projections behind its collapse monitor (``python -m
msbreg.analysis.projection_geometry``); ``trained_run`` rebuilds a finished run's method for the last two.
"""
