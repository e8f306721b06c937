"""The project's error type and the command-line wrapper that prints it.

Every mistake a user can cause (flags, config values, paths, corpus layout, data files,
checkpoints or bundles that do not fit) is raised as a :class:`SerJaxError`: a :class:`UsageError`
(exit code 2) for what the user asked for, a :class:`DataError` (exit code 1) for what the files
hold. :func:`run_cli` prints it as ``ser-jax: error: <what> — <what to do>`` without a
traceback (``--verbose`` or ``SER_JAX_VERBOSE=1`` adds it); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging

PROGRAM = "ser-jax"
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
VERBOSE_ENV = "SER_JAX_VERBOSE"


class SerJaxError(Exception):
    """A problem the user can fix; ``str()`` names the thing and what to do about it."""

    exit_code = 1


class UsageError(SerJaxError):
    """A bad flag, config value or path: the command itself must change (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A config value that does not fit the data or the machine (also a ValueError, for
    library callers that catch that)."""


class DataError(SerJaxError):
    """Missing, damaged or unusable data, checkpoints or bundles (exit code 1)."""

    exit_code = 1


def verbose() -> bool:
    """True when ``--verbose`` was given or ``SER_JAX_VERBOSE`` is set to a true value."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    if flags.FLAGS.is_parsed() and "verbose" in flags.FLAGS:
        return bool(flags.FLAGS.verbose)
    return any(arg in ("--verbose", "--verbose=true", "--verbose=True") for arg in sys.argv)


def format_error(error: BaseException) -> str:
    """The one- or two-line message printed for ``error``."""
    return f"{PROGRAM}: error: {error}"


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """``absl.app.run(main)``, but a :class:`SerJaxError` (or a flag error) exits with its
    exit code after printing :func:`format_error` to stderr, with the traceback only when
    :func:`verbose`."""

    def guarded_main(args: list[str]) -> object:
        logging.get_absl_handler().addFilter(_only_our_info_messages)
        try:
            return main(args)
        except SerJaxError as error:
            _exit(error, error.exit_code)
        except app.UsageError as error:  # absl's own, raised by main for bad arguments
            _exit(UsageError(str(error)), 2)
        except KeyboardInterrupt:
            _exit(SerJaxError("interrupted — finished stages and checkpoints are kept; rerun "
                              "the same command to continue"), 130)
        return None

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False,
                          f"Show the traceback of ser-jax errors (or set {VERBOSE_ENV}=1).")
    app.run(guarded_main, argv=list(argv) if argv is not None else None,
            flags_parser=_parse_flags)


def _only_our_info_messages(record: std_logging.LogRecord) -> bool:
    """Keeps ser_jax's INFO lines and everyone's warnings (JAX logs its backend search at INFO,
    Orbax every file it writes)."""
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        flags.FLAGS.mark_as_parsed()
        required = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None",
                            str(error))
        message = f"--{required[1]} is required" if required else str(error)
        _exit(UsageError(f"{message} — see --helpshort for the flags"), 2)
    except Exception as error:  # noqa: BLE001  a config file or override that does not load
        flags.FLAGS.mark_as_parsed()
        _exit(UsageError(f"cannot parse the command line: {_describe(error)} — fix that flag "
                         "or the config file"), 2)
    raise AssertionError("unreachable")


def _describe(error: Exception) -> str:
    """A one-line account of an exception raised while a flag was parsed."""
    if isinstance(error, SyntaxError):
        return f"{error.filename} line {error.lineno}: {error.msg}"
    text = str(error).replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    if isinstance(error, KeyError | AttributeError):
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        text = f"unknown config field {text}"
    return " ".join(text.split())


def _exit(error: BaseException, code: int) -> None:
    if verbose():
        traceback.print_exc(file=sys.stderr)
    print(format_error(error), file=sys.stderr, flush=True)
    sys.exit(code)
