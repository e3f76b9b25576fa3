"""The one exception type for bad user input (its message names the case or file and the fix), and how it reaches
the user: ``<command>: error: <message>``, without a traceback."""
import sys
from typing import Callable


class ADInputError(ValueError):
    """Raised for invalid datasets, split files or options. The message says what is wrong and how to fix it."""


def report_input_errors_plainly(prog: str) -> None:
    """Make an ``ADInputError`` that ends this process print ``<prog>: error: <message>`` instead of a traceback.

    For code that runs inside a command we do not own (``nnUNetv2_train`` builds the trainer): Python's exit status
    for an uncaught exception (1) stays. Other exceptions keep the previous hook and its traceback.
    """
    previous = sys.excepthook
    if getattr(previous, "reports_input_errors", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, ADInputError):
            print(f"{prog}: error: {exc}", file=sys.stderr)
        else:
            previous(exc_type, exc, tb)

    hook.reports_input_errors = True
    sys.excepthook = hook


def report_input_errors(prog: str, body: Callable[[], object]) -> int:
    """Run a command's ``body()``; its exit status: 0, or 2 with ``<prog>: error: <message>`` on stderr when it
    raises ``ADInputError`` (the one error handler of every ``adnnunet_*`` command)."""
    try:
        body()
    except ADInputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
