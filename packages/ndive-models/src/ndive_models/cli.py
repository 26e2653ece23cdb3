"""The ``ndive`` command line: one argparse subcommand per module in :data:`SUBCOMMANDS`.

To add a subcommand, write a module with

- ``NAME`` (the subcommand), ``HELP`` (one line),
- ``add_arguments(parser)`` adding its options to an ``argparse.ArgumentParser``,
- ``run(args) -> int`` doing the work (heavy imports inside ``run``, so ``ndive --help``
  stays fast and works without optional extras),

and append its import path to :data:`SUBCOMMANDS`. A module that can also be run as
``python -m ndive_models.<module>`` keeps only a thin alias that calls :func:`run_as_program`
(so the options and the error handling exist once, here and in ``_cmd_<name>``).
"""

from __future__ import annotations

import _thread
import argparse
import faulthandler
import importlib
import signal
import sys
import threading

#: Modules implementing subcommands, in ``--help`` order.
SUBCOMMANDS = [
    "ndive_models._cmd_generate",
    "ndive_models._cmd_validate_data",
    "ndive_models._cmd_convert",
    "ndive_models._cmd_train",
    "ndive_models._cmd_evaluate",
    "ndive_models._cmd_export",
    "ndive_models._cmd_demo",
    "ndive_models._cmd_paper",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ndive",
        description="NDIVE: jet data generation, training, evaluation, the demo and the "
                    "paper study.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for path in SUBCOMMANDS:
        mod = importlib.import_module(path)
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=mod.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (e.g. ``"demo"``), as ``ndive NAME`` uses it."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


#: Seconds after the first Ctrl-C/kill before the interruption is raised once more (in case
#: a library swallowed it, e.g. in a ``__del__`` or a C extension's import), and before the
#: process is ended hard with a traceback dump (in case cleanup itself got stuck).
RERAISE_AFTER_S = 10.0
HARD_EXIT_AFTER_S = 30.0
#: After an interruption keep the hard-exit timer, and the handler that holds back further
#: signals, through interpreter shutdown (set when run as a program, so that callers of
#: :func:`main` in the same process get their handlers back and are never ended by the timer).
_WATCHDOG_UNTIL_EXIT = False


class _Interruption:
    """Handler of SIGINT and SIGTERM during a command.

    The first signal raises (KeyboardInterrupt for SIGINT, ``SystemExit(128 + signum)`` for
    SIGTERM), so context managers clean up: workers are ended, partial files deleted. Later
    signals are only counted, so that a second Ctrl-C cannot break off that cleanup (which is
    bounded). A watchdog raises the interruption once more after :data:`RERAISE_AFTER_S` and
    ends the process after :data:`HARD_EXIT_AFTER_S` if it is still running: Ctrl-C never hangs.
    """

    def __init__(self):
        self.received: list[int] = []
        self._again = False
        self._done = threading.Event()

    def __call__(self, signum, frame):
        if self._again:  # the watchdog's second raise
            self._again = False
        elif self.received:
            self.received.append(signum)
            return
        else:
            self.received.append(signum)
            try:
                faulthandler.dump_traceback_later(
                    HARD_EXIT_AFTER_S, exit=True, file=sys.__stderr__
                )
            except (AttributeError, ValueError, RuntimeError, OSError):
                pass  # no usable stderr (embedded use): the second raise must do
            threading.Thread(target=self._watchdog, daemon=True).start()
        if self.received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + self.received[0])

    def _watchdog(self):
        if not self._done.wait(RERAISE_AFTER_S):
            self._again = True
            _thread.interrupt_main(signal.SIGINT)

    def finish(self):
        self._done.set()
        if not (self.received and _WATCHDOG_UNTIL_EXIT):  # the shutdown may hang too
            faulthandler.cancel_dump_traceback_later()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _Interruption()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        for s, h in old.items():
            # a signal the process was started with ignored (a background job of a
            # non-interactive shell ignores Ctrl-C, as does nohup) stays ignored
            if h is not signal.SIG_IGN:
                signal.signal(s, handler)
        rc = int(args._run(args) or 0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        handler.finish()
        if not (handler.received and _WATCHDOG_UNTIL_EXIT):  # else: later signals wait, too
            for s, h in old.items():
                signal.signal(s, h)
    # A signal counts even if a library swallowed its exception and the command went on.
    if handler.received and handler.received[0] != signal.SIGINT:
        raise SystemExit(128 + handler.received[0])
    if interrupted or handler.received:
        print("interrupted", file=sys.stderr)
        return 130
    return rc


def run_as_program(argv: list[str] | None = None) -> int:
    """:func:`main` for a process that ends when it returns (``ndive`` itself and the
    ``python -m ndive_models.demo`` / ``.paper`` / ``.train`` aliases)."""
    global _WATCHDOG_UNTIL_EXIT
    _WATCHDOG_UNTIL_EXIT = True
    return main(argv)


if __name__ == "__main__":
    sys.exit(run_as_program())
