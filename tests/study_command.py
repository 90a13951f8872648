"""A stand-in for a trainer in the study runner's tests (``tests/test_study_runner.py``), a job's command:

    main([FOLDER, "wait"])   # the first start waits for SIGTERM/SIGUSR1 and exits 75 with its folder kept, as the
                             # trainer does after saving a checkpoint; a later start in the same folder finishes
    main([FOLDER, "quick"])  # finishes at once
    main([FOLDER, "after", NEEDED])  # finishes at once, reading NEEDED/weights.bin (a job it needs): as a probe
                                     # reads its run's checkpoint, it fails when that file is missing

Each start appends a line to ``FOLDER/starts.txt`` (a resumed job finds the earlier lines); ``FOLDER/waiting``
says the job is waiting; a finished job writes ``FOLDER/weights.bin`` (as a trainer its checkpoint), then
``FOLDER/done.txt`` last.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from common.errors import EXIT_PREEMPTED


def main(argv: list[str]) -> int:
    folder, mode = Path(argv[0]), argv[1]
    starts = folder / "starts.txt"
    earlier = starts.read_text().splitlines() if starts.is_file() else []
    starts.write_text("".join(line + "\n" for line in [*earlier, mode]))
    if mode == "wait" and not earlier:
        received = []
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, lambda number, frame: received.append(number))
        (folder / "waiting").write_text("")
        while not received:
            time.sleep(0.05)
        return EXIT_PREEMPTED
    if mode == "after":
        (Path(argv[2]) / "weights.bin").read_bytes()
    (folder / "weights.bin").write_bytes(bytes(8))
    (folder / "done.txt").write_text(f"{len(earlier) + 1} starts\n")
    return 0
