"""The project's input errors: what a user can fix by changing a command, a config or a file.

Entry points print an ``InputError`` as one line and exit with ``EXIT_BAD_INPUT``; every other exception
is a bug (or a failure of the machine) and keeps its traceback (exit 1). Raise these only for input: a
shape mismatch inside a method is a bug, not bad input. They subclass ``ValueError`` so that code and tests
that expect a ``ValueError`` for a bad value keep working.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a scheduler should requeue the job (resume=auto continues it)


class InputError(ValueError):
    """Bad input; the message is one line that names what to change."""


class ConfigError(InputError):
    """A bad config: unknown key, wrong type, a value outside its choices, an unreadable file."""


class DataError(InputError):
    """Missing, empty, corrupt or undownloadable data."""


class RunFolderError(InputError):
    """An output folder or checkpoint that cannot be used as asked (another run, nothing to resume)."""
