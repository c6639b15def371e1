"""The ``deltakg`` command line: thin wrappers that parse arguments, call the Python API and print.

One module per command group; each has ``register(commands)``. Every command takes ``--json`` for
machine-readable output. Bad input exits with code 2 and one line naming the file, line and field (or the
argument); an unexpected failure prints one line too (``--verbose`` shows the traceback) and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from ._common import CommandError, HelpFormatter

__all__ = ["main", "build_parser", "COMMAND_MODULES", "CommandError"]

EXIT_USAGE = 2
EXIT_INTERNAL = 1

# command groups, in the order ``deltakg --help`` lists them: module ``deltakg.cli.<name>`` with ``register``
COMMAND_MODULES = ("demo", "data", "kge", "editsets", "editing", "benchmark_edits", "llm", "llm_edit", "knn_classify")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deltakg`` command."""
    parser = argparse.ArgumentParser(
        prog="deltakg", formatter_class=HelpFormatter,
        description="Knowledge editing over triples: KG data, KG embeddings and their editors.",
        epilog="Run 'deltakg COMMAND --help' for a command's options.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party logs and warnings, and the traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    return parser


def _quiet_third_party() -> None:
    # Lightning's tips and device summary, deprecation notices of libraries: noise for a user of this CLI
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "transformers",
                 "pykeen", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in (DeprecationWarning, FutureWarning, UserWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a redirected or captured stream too)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_own_progress_notes() -> None:
    # deltakg's own info lines (e.g. what ``auto`` precision chose) go to stderr, keeping stdout for --json
    logger = logging.getLogger("deltakg")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("deltakg: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _user_errors() -> tuple[type[BaseException], ...]:
    from kg_data.errors import KGDataError

    return (KGDataError, CommandError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deltakg`` console script."""
    # spin-waiting OpenMP threads make torch 10-30x slower on a shared CPU; torch is imported lazily below
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not args.verbose:
        _quiet_third_party()
    _show_own_progress_notes()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as err:
        print(f"deltakg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deltakg: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: one line, the traceback with --verbose
        if args.verbose:
            raise
        print(f"deltakg: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
              f"(rerun with --verbose for the traceback; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
