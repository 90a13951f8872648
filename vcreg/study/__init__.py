"""VCReg's study at CPU scale on the shared runner (``python -m vcreg.study``): its jobs (``vcreg.study.jobs``,
recipes in ``vcreg/configs/study/``), its tables and figures (``vcreg.study.report``)."""

from vcreg.study.jobs import PAPER, jobs
from vcreg.study.report import report

__all__ = ["PAPER", "jobs", "report"]
