"""The ``cnncodes`` command line: a thin argparse front end over the library (nothing imports it).

Every command is a module of this package with a pair ``add_<command>_parser(subparsers)`` /
``run_<command>(args) -> int``, registered in :data:`COMMANDS`; shared options, value parsers,
output and error plumbing live in :mod:`cnncodes.cli._core`, so a new command is one more module.
The work itself (codes, the export format, cache verification, fitting) is the library's.

Exit status: 0 on success, 2 for a usage or input error (the library's
:class:`~cnncodes.errors.UsageError`: one line on stderr starting ``cnncodes: error:``, no
traceback), 1 for a file that cannot be written (:class:`OSError`) or a bug (any other exception:
one line naming it), 130 when interrupted. ``cnncodes --debug COMMAND ...`` (or
``CNNCODES_DEBUG=1``) prints the traceback of any error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings

from .. import __version__
from ..errors import CNNCodesError
from ..images.load import ImageLoadError
from ..store.cache import CacheWarning
from ._core import (
    _DEBUG_HINT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _fill,
    _Formatter,
    _Parser,
)
from .advise import add_advise_parser
from .cache import add_cache_parser
from .compare import add_compare_parser
from .demo import add_demo_parser
from .extract import add_extract_parser
from .finetune import add_finetune_parser
from .fit import add_fit_parser
from .layers import add_layers_parser
from .predict import add_predict_parser
from .rank import add_rank_parser
from .weights import add_weights_parser

# torch, torchvision and scikit-learn are imported by the commands that need them, not here:
# they take seconds to import, which --help, --version and `cache info` must not pay.

__all__ = ["main", "build_parser", "COMMANDS"]


# One add_<command>_parser per command, in --help order; each sets ``run`` to its run_<command>.
COMMANDS = [
    add_fit_parser,
    add_predict_parser,
    add_finetune_parser,
    add_extract_parser,
    add_layers_parser,
    add_cache_parser,
    add_weights_parser,
    add_advise_parser,
    add_rank_parser,
    add_compare_parser,
    add_demo_parser,
]


def build_parser():
    """The ``cnncodes`` argument parser with every registered command."""
    parser = _Parser(
        prog="cnncodes",
        description=_fill(
            "CNN codes from frozen pretrained networks, cached in HDF5, for "
            "scikit-learn. Run 'cnncodes COMMAND --help' for the options and examples of a command."
        ),
        epilog="exit status: 0 success, 2 usage or input error, 1 other error (a file that "
        "cannot be written, a bug), 130 interrupted\n"
        "CNNCODES_CACHE sets the default cache folder; --debug or CNNCODES_DEBUG=1 shows "
        "tracebacks.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"cnncodes {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of any error (before COMMAND; also CNNCODES_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for add in COMMANDS:
        add(subparsers)
    return parser


_BUG = "unexpected error, a bug (in cnncodes, or in the recipe or model code it ran)"


def _error(message):
    print(f"cnncodes: error: {' '.join(str(message).split(chr(10)))}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"cnncodes: warning: {message}", file=sys.stderr)


def _wants_debug(argv):
    """``--debug`` before the command, or ``CNNCODES_DEBUG=1``: tracebacks of every error."""
    argv = sys.argv[1:] if argv is None else argv
    given = "--debug" in [str(a) for a in argv[: _command_index(argv)]]
    return given or os.environ.get("CNNCODES_DEBUG", "") not in ("", "0")


def _command_index(argv):
    """Where the command's name is in ``argv`` (global options come before it)."""
    for i, arg in enumerate(argv):
        if not str(arg).startswith("-"):
            return i
    return len(argv)


def _run(argv):
    args = build_parser().parse_args(argv)
    return int(args.run(args) or EXIT_OK)


def main(argv=None):
    """Run the command line; returns the exit status (the console script exits with it).

    The command line catches the library's own errors (:class:`~cnncodes.errors.UsageError`
    and the rest of :class:`~cnncodes.errors.CNNCodesError`: exit 2, one line), Ctrl-C (130) and
    :class:`OSError` (a folder that cannot be written, a full disk: exit 1, one line). Any other
    exception is a bug, in cnncodes or in a recipe or model the user wrote: exit 1, one line
    naming it; ``--debug`` (or ``CNNCODES_DEBUG=1``) prints its traceback.

    Examples
    --------
    >>> main(["layers", "resnet18", "--weights", "none", "--json"])  # doctest: +SKIP
    0
    """
    debug = _wants_debug(argv)
    # `--model package.module:callable` finds the user's modules in the working folder, as
    # `python -m` would (appended: it never shadows an installed package).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    with warnings.catch_warnings():
        warnings.simplefilter("default", CacheWarning)  # a bad cache file is recomputed, not fatal
        warnings.showwarning = _show_warning
        try:
            return _run(argv)
        except SystemExit as exc:  # --help, --version, argparse's usage errors
            if exc.code is None:
                return EXIT_OK
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        except KeyboardInterrupt:
            print(
                "cnncodes: interrupted (codes computed so far are kept in the cache)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except ImageLoadError as exc:  # only commands with --on-error let one through
            _traceback(debug)
            _error(f"{exc} (--on-error skip carries on without unreadable images, listing them)")
            return EXIT_USAGE
        except CNNCodesError as exc:  # UsageError and its kind: the user's to fix
            _traceback(debug)
            _error(exc)
            return EXIT_USAGE
        except BrokenPipeError:  # e.g. `cnncodes layers resnet50 | head`
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            return EXIT_FAILURE
        except OSError as exc:  # a folder that cannot be written, a full disk, ...
            _traceback(debug)
            _error(exc)
            return EXIT_FAILURE
        except Exception as exc:  # anything else is a bug: say so, and how to see where
            _traceback(debug)
            _error(f"{_BUG}: {type(exc).__name__}: {exc}{'' if debug else '; ' + _DEBUG_HINT}")
            return EXIT_FAILURE


def _traceback(debug):
    if debug:
        traceback.print_exc()
