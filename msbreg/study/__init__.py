"""MSBReg's study at CPU scale on the shared runner (``python -m msbreg.study``): supplementary Tables 3 and 5
(``msbreg.study.jobs``, ``msbreg.study.report``) and Table 4 under each reading of the losses
(``msbreg.study.table4``)."""

from msbreg.study.jobs import PAPER, jobs
from msbreg.study.report import report

__all__ = ["PAPER", "jobs", "report"]
