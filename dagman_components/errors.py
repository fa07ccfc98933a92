"""
Errors a user can act on, and how a bundle run reports them.

MONAI wraps every exception raised while it evaluates a config expression or instantiates a component
(``RuntimeError: Failed to evaluate ConfigExpression`` / ``Failed to instantiate component``), and
``monai.transforms.Compose`` wraps transform errors (``RuntimeError: applying transform``); so the project's
own message, which names the file, key or value at fault and what to do, sits mid-traceback. The
exception hook of :py:func:`install_excepthook`, installed when a bundle config imports
:py:mod:`dagman_components.bundle_utils`, finds that message in the exception's chain, logs it as one
``ERROR`` line before Python prints the traceback, and, when it was wrapped, repeats it as the last line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType

__all__ = [
    "BadImageError",
    "error_chain",
    "error_line",
    "install_excepthook",
    "report_error",
    "user_error",
]

logger = logging.getLogger(__name__)

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class BadImageError(ValueError):
    """An image that cannot be trained on: unreadable, not 3D, non-finite, constant, empty, tiny or not CT-like.

    A ``ValueError`` (as the project's other bad-input errors) that carries what ``on_bad_image: skip``
    needs to drop the file and say why.

    Args:
        filename: the image file at fault.
        reason: what is wrong with it and, where it helps, what to do.
    """

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = str(filename)
        self.reason = reason
        super().__init__(f"image '{self.filename}' {reason}")

    def __reduce__(self) -> tuple:  # picklable with its two arguments (DataLoader workers re-raise it)
        return type(self), (self.filename, self.reason)


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (``__cause__``, else unsuppressed ``__context__``)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _raised_in_project(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback (where it was raised) is in this package."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def user_error(exc: BaseException) -> BaseException:
    """The exception of ``exc``'s chain a user should read.

    The innermost one raised by this package (its message names the file, key or value at fault), else
    the root cause (e.g. torch's own error when no project check caught it).
    """
    chain = error_chain(exc)
    own = [e for e in chain if _raised_in_project(e)]
    return own[-1] if own else chain[-1]


def error_line(exc: BaseException) -> str:
    """``"<Type>: <message>"`` of :py:func:`user_error` on one line."""
    error = user_error(exc)
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    # a DataLoader worker's error carries the worker's whole traceback as text: its last line is the message
    if "Original Traceback" in str(message):
        message = [line for line in str(message).splitlines() if line.strip()][-1]
        return " ".join(message.split())
    return f"{type(error).__name__}: {' '.join(str(message).split())}"


def report_error(exc: BaseException, log: logging.Logger | None = None) -> str:
    """Log :py:func:`error_line` of ``exc`` as one ERROR record (on ``log``, default this module's logger); return it."""
    line = error_line(exc)
    (log or logger).error(line)
    return line


def _flush_output() -> None:
    # the log line goes to stdout (the bundles' logging.conf), the traceback to stderr: flush in between so a
    # terminal or a `2>&1` log shows them in order
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()


class _ExceptHook:
    """``sys.excepthook`` that brackets Python's traceback with the user's error (see the module docstring)."""

    def __init__(self, previous: object) -> None:
        self.previous = previous

    def __call__(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: nothing to explain
            self.previous(exc_type, exc, tb)
            return
        try:
            line = report_error(exc)
            _flush_output()
        except Exception:  # never hide the traceback behind a failure of the report
            line = None
        self.previous(exc_type, exc, tb)
        # a wrapped error (MONAI's config or transform wrappers) ends the traceback with the wrapper: say it again
        if line is not None and user_error(exc) is not exc:
            print(f"\nERROR (the cause of the traceback above): {line}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Report uncaught errors of this process as described in the module docstring; idempotent.

    Chains to the hook found in place, so a debugger's or IDE's hook still runs.
    """
    if not isinstance(sys.excepthook, _ExceptHook):
        sys.excepthook = _ExceptHook(sys.excepthook)
