"""A pool of producer processes read strictly round-robin, built so that the parent never hangs.

Design (each point closes one way the parent could block forever or keep a half-written file):

- **Fresh interpreters, no fork**: each worker is ``python -c ...`` started with
  :mod:`subprocess` (module :mod:`._child`). The parent may have imported multithreaded
  libraries (JAX and PyTorch start thread pools; the tests import JAX); forking a
  multithreaded process can copy a held lock into the child and deadlock it. Unlike
  multiprocessing's spawn/forkserver, nothing re-imports the caller's ``__main__``, so
  ``generate`` works from scripts without an ``if __name__ == "__main__"`` guard and from
  notebooks.
- **Two private pipes per worker**: the worker's stdout carries length-prefixed messages
  (``multiprocessing.connection`` framing) and nothing else (fd 1 is redirected to stderr in
  the worker, so stray prints, also from C++, cannot corrupt it); the parent holds the only
  read end. When a worker dies, even in the middle of a message, the parent's read sees
  end-of-file and raises instead of waiting for bytes that will never come. The worker's stdin
  stays open while the parent wants data: when the parent closes it, or dies, the worker exits
  at once (no orphans, even in the middle of a Pythia batch).
- **Bounded waits**: the parent polls each pipe with a short timeout and checks between polls
  that the worker is alive; a worker that is alive but sends nothing for ``stall_timeout``
  seconds is an error too.
- **Errors travel as messages**: an exception in a worker is sent with its traceback and
  raised in the parent as :class:`WorkerError`.
- **Signals**: workers ignore SIGINT (Ctrl-C in a terminal reaches the whole process group;
  the parent decides), so the parent's KeyboardInterrupt or SystemExit (SIGTERM in the CLI)
  unwinds normally and :meth:`WorkerPool.close` ends the workers. ``close`` holds SIGINT and
  SIGTERM back while it runs (a second Ctrl-C cannot break it off), never raises, and never
  relies on ``Popen.poll``'s lock, which an ill-timed KeyboardInterrupt can leave held.
- Each worker runs ahead of the parent by at most ``ahead`` items (a sender thread writes
  while the producer computes the next item).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection

from .._signals import signals_deferred

#: Bootstrap of a worker: read sys.path from stdin, then hand over to ``_child.main``.
_BOOT = (
    "import sys, pickle; from multiprocessing.connection import Connection; "
    "c = Connection(0, writable=False); sys.path[:] = pickle.loads(c.recv_bytes()); "
    "from ndive_models.generate._child import main; main(c)"
)


_SEE_STDERR = " (its error output, printed above, may say why)"


def _exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has ended, without reaping it and without ``Popen``'s internal lock.

    ``Popen.poll`` takes a lock that a KeyboardInterrupt landing between its acquire and its
    ``try`` leaves held; every later ``Popen.wait`` then times out. ``waitid(WNOWAIT)`` only
    looks.
    """
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # pragma: no cover -- not on Linux
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _wait_exited(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait (lock-free, see :func:`_exited`) until ``proc`` ends or ``time.monotonic()`` passes
    ``deadline``; whether it ended."""
    while not _exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _end(proc: subprocess.Popen, deadline: float) -> None:
    """Let ``proc`` exit until ``deadline``, else SIGKILL it; then reap it. At most ~5 s more."""
    if not _wait_exited(proc, deadline) and proc.returncode is None:
        try:  # not reaped yet, so the pid is still ours
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_exited(proc, time.monotonic() + 5.0)
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:  # Popen's lock is held (see _exited): reap it ourselves
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pass


class WorkerError(RuntimeError):
    """A worker process failed, died or stopped sending; the message says which and how."""


class WorkerPool:
    """``n`` worker processes running ``produce(w, *args)`` (a generator of picklable items).

    :meth:`get` returns worker ``w``'s next item; :meth:`close` ends all workers (also use the
    pool as a context manager). ``produce`` and ``args`` are pickled: ``produce`` must be a
    module-level function importable with the parent's ``sys.path``.

    Raises (from :meth:`get`):
        WorkerError: the worker raised (its traceback is in the message), died (exit code or
        signal given), was cut off in the middle of a message, or sent nothing for
        ``stall_timeout`` seconds while alive.
    """

    def __init__(
        self,
        n: int,
        produce,
        args: tuple = (),
        *,
        ahead: int = 2,
        poll_interval: float = 0.5,
        stall_timeout: float = 600.0,
        name: str = "generator worker",
    ):
        self.name = name
        self.poll_interval = poll_interval
        self.stall_timeout = stall_timeout
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []  # data from each worker (read end)
        self._controls: list[Connection] = []  # each worker's stdin: open = keep going
        try:
            for w in range(n):
                self._start(w, produce, args, ahead)
        except BaseException:
            self.close()
            raise

    def _start(self, w, produce, args, ahead):
        data_r, data_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT], stdin=ctl_r, stdout=data_w, close_fds=True
            )
        except BaseException:
            for fd in (data_r, data_w, ctl_r, ctl_w):
                os.close(fd)
            raise
        os.close(data_w)  # the worker holds the only write end of its data pipe
        os.close(ctl_r)
        self.procs.append(proc)
        self.conns.append(Connection(data_r, writable=False))
        control = Connection(ctl_w, readable=False)
        self._controls.append(control)
        try:
            control.send_bytes(pickle.dumps(list(sys.path)))
            control.send_bytes(pickle.dumps((produce, w, args, ahead)))
        except OSError:
            raise WorkerError(
                f"{self.name} {w} (pid {proc.pid}) exited during start-up: "
                f"{self._describe_exit(w)}{_SEE_STDERR}"
            ) from None

    def _describe_exit(self, w: int) -> str:
        proc = self.procs[w]
        try:
            code = proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def get(self, w: int):
        """The next item of worker ``w`` (blocks, but never forever; see the class doc)."""
        conn, proc = self.conns[w], self.procs[w]
        who = f"{self.name} {w} (pid {proc.pid})"
        t0 = time.monotonic()
        while not conn.poll(self.poll_interval):
            if _exited(proc) and not conn.poll(0):
                raise WorkerError(
                    f"{who} died without sending data: {self._describe_exit(w)}{_SEE_STDERR}"
                )
            if time.monotonic() - t0 > self.stall_timeout:
                raise WorkerError(f"{who} is alive but sent nothing for {self.stall_timeout} s")
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError) as err:
            raise WorkerError(
                f"{who} stopped before or during a message ({str(err) or 'end of file'}): "
                f"{self._describe_exit(w)}{_SEE_STDERR}"
            ) from None
        try:
            kind, item = pickle.loads(data)
        except Exception as err:  # noqa: BLE001
            raise WorkerError(f"{who} sent an unreadable message: {err!r}") from None
        if kind == "error":
            raise WorkerError(f"{who} failed:\n{item}")
        return item

    def close(self) -> None:
        """End all workers: close their stdin (they exit at once) and pipes, then wait or kill.

        Never reads from a pipe and never raises: returns within about 10 s even if a worker
        ignores its closed stdin. SIGINT/SIGTERM arriving meanwhile are delivered afterwards
        (:func:`~ndive_models._signals.signals_deferred`), so a second Ctrl-C cannot leave
        a worker running.
        """
        with signals_deferred():
            for conn in self._controls + self.conns:
                conn.close()
            deadline = time.monotonic() + 5.0
            for proc in self.procs:
                _end(proc, deadline)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
