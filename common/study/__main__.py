"""``python -m common.study`` (the console script ``ssl-reproduce``): every paper's study, see
``common.study.cli``."""

import sys

from common.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
