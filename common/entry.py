"""What every command of the project does around its work: read the config, map the outcome to an exit code.

``trainer_main`` makes the whole ``main`` of a ``train.py`` from its config schema and ``build_method``;
``run_command`` wraps any other command
(evaluation protocols, analyses, fine-tuning). Exit codes (``common.errors``): 0 done, 1 failed (a bug keeps its
traceback; a diverging run names its step), 2 bad input (one line naming what to change), 75 preempted (a
checkpoint is saved; requeue with ``resume=auto``). ``SSL_REPRO_DEBUG=1`` shows the traceback of bad input too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common.config_help import parse_command_line
from common.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_PREEMPTED, InputError
from common.trainer import BuildMethod, Evaluate, NonFiniteLossError, Preempted, Trainer

USAGE = """usage: {script} [--config FILE.yaml] [key=value ...] [--print-config] [--help]

{doc}
  --config FILE      a YAML file of keys (dataclass defaults < file < key=value overrides)
  key=value          set a key; dotted keys for sections (optim.lr=0.5); --key value works too
  --print-config     print the resolved config as YAML and exit without running
  -h, --help         this text
"""


def input_error_line(error: InputError) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def run_command(body: Callable[[], int | None]) -> int:
    """Run ``body`` and turn its outcome into an exit code: bad input is one line on stderr and code 2."""
    try:
        return body() or 0
    except BrokenPipeError:  # the output went to a pager or `head` that has closed: nothing more to say
        sys.stderr.close()
        return 0
    except Preempted as message:
        print(f"preempted: {message}", file=sys.stderr)
        return EXIT_PREEMPTED
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except InputError as error:
        if os.environ.get("SSL_REPRO_DEBUG"):
            raise
        print(f"error: {input_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def usage_text(script: str, doc: str | None) -> str:
    return USAGE.format(script=script, doc=(doc or "").strip())


def run_trainer(schema: type, build_method: BuildMethod, *, evaluate: Evaluate | None = None,
                argv: Sequence[str] | None = None, default_config: str | Path | None = None,
                script: str = "train.py", doc: str | None = None) -> int:
    """A paper's ``train.py`` main: parse ``argv`` against ``schema`` (``--help``, ``--print-config``), train,
    evaluate; the exit code."""

    def body() -> int:
        cfg = parse_command_line(schema, argv, usage_text(script, doc), default_config)
        if cfg is not None:
            Trainer(cfg, build_method, evaluate).fit()
        return 0

    return run_command(body)


def script_name(module) -> str:
    """How a user runs ``module``: its path from the repository root (``stochcon/train.py``), or ``python -m``."""
    root = Path(__file__).resolve().parent.parent
    file = Path(module.__file__).resolve()
    return file.relative_to(root).as_posix() if file.is_relative_to(root) else f"python -m {module.__name__}"


def trainer_main(schema: type, build_method: BuildMethod, *, evaluate: Evaluate | None = None,
                 default_config: str | Path | None = None) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv=None)`` of a ``train.py``: ``run_trainer`` with the usage line and text of the module that
    defines ``build_method`` (its path and its docstring), so that a trainer file is its config schema,
    ``build_method`` and this one call."""
    module = sys.modules[build_method.__module__]
    script = script_name(module)

    def main(argv: Sequence[str] | None = None) -> int:
        return run_trainer(schema, build_method, evaluate=evaluate, argv=argv, default_config=default_config,
                           script=script, doc=module.__doc__)

    return main
