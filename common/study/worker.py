"""One job of the study in its own process (``common.study.jobs`` starts it): run the command, record it.

    python -m common.study.worker --module stochcon.train --state RUN.job --inputs '{}' -- key=value ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.study.jobs import execute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", required=True)
    parser.add_argument("--state", required=True, type=Path, help="the job's record and log folder")
    parser.add_argument("--inputs", default="{}", help="JSON: the finished_at of every job this one needs")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return execute(args.module, command, args.state, json.loads(args.inputs))


if __name__ == "__main__":
    sys.exit(main())
