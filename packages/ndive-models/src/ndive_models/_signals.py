"""Cleanup code that a Ctrl-C (SIGINT) or ``kill`` (SIGTERM) cannot break off halfway.

Python raises KeyboardInterrupt at almost any bytecode of the main thread, also inside
``finally`` blocks and ``__exit__`` methods. A second Ctrl-C while workers are being stopped or
a partial file is being deleted would abandon that cleanup. :func:`signals_deferred` holds such
signals back for the duration of a block and delivers them afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading

#: Signals held back by :func:`signals_deferred`.
DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred(signums=DEFERRED):
    """Run the block with SIGINT/SIGTERM recorded instead of handled; deliver them afterwards.

    Inside the block a signal only sets a note (no KeyboardInterrupt, no SystemExit from a
    handler); on leaving it the previous handlers are restored and the first signal received
    meanwhile is raised again, so it takes effect as if it had arrived just after the block.
    Only the main thread can change handlers: elsewhere the block runs unprotected. Keep the
    block short and bounded (it must not wait for anything without a timeout).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Read the handlers before replacing any, so an interruption here leaves nothing replaced.
    old = {s: signal.getsignal(s) for s in signums}
    old = {s: h for s, h in old.items() if h is not None}  # None: set from C, not ours to touch
    received: list[int] = []

    def record(signum, frame):
        received.append(signum)

    try:
        for s in old:
            signal.signal(s, record)
        yield
    finally:
        _restore(list(old.items()))
        if received:
            signal.raise_signal(received[0])


def _restore(handlers: list) -> None:
    # Each restore in the ``finally`` of the previous one: a handler that raises as soon as it
    # is back cannot leave the others replaced.
    if not handlers:
        return
    (s, h), rest = handlers[0], handlers[1:]
    try:
        signal.signal(s, h)
    finally:
        _restore(rest)
