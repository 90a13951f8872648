"""``python -m stochcon.study``: this paper's study on the shared runner (``common.study.cli``, same arguments)."""

import sys

from common.study.cli import main

if __name__ == "__main__":
    sys.exit(main(papers=("stochcon",), prog="python -m stochcon.study"))
