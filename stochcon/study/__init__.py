"""StochCon's study at CPU scale on the shared runner (``python -m stochcon.study``): its jobs
(``stochcon.study.jobs``), its tables and figures (``stochcon.study.report``)."""

from stochcon.study.jobs import PAPER, jobs
from stochcon.study.report import report

__all__ = ["PAPER", "jobs", "report"]
