"""Entry point of a :class:`~._workers.WorkerPool` worker process (see ``_workers`` for design).

Started as ``python -c <bootstrap>``: stdin carries two setup frames (the parent's
``sys.path``, then ``(produce, worker, args, ahead)``) and then stays open until the parent
wants no more data; stdout carries the data frames ``("ok", item)`` or ``("error", text)``.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import traceback
from multiprocessing.connection import Connection

#: File descriptor of the data pipe in a worker (set by :func:`main`).
data_fd: int | None = None


def _exit_when_parent_is_done(control: Connection) -> None:
    """Watchdog thread: stdin closes when the parent is done or dead; then exit at once."""
    try:
        while True:
            control.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)


def main(control: Connection) -> None:
    global data_fd
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent decides
    # The data pipe moves off fd 1; fd 1 becomes stderr, so stray output (Python or C++)
    # cannot corrupt the message stream.
    data_fd = os.dup(1)
    os.dup2(2, 1)
    data = Connection(data_fd, readable=False)
    produce, worker, args, ahead = pickle.loads(control.recv_bytes())
    threading.Thread(target=_exit_when_parent_is_done, args=(control,), daemon=True).start()

    outbox: queue.Queue = queue.Queue(maxsize=ahead)
    broken = threading.Event()  # the parent closed its end of the data pipe

    def send_loop():
        try:
            while (frame := outbox.get()) is not None:
                data.send_bytes(frame)
        except OSError:
            broken.set()

    def post(frame) -> bool:
        while not broken.is_set():
            try:
                outbox.put(frame, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    sender = threading.Thread(target=send_loop, daemon=True)
    sender.start()
    try:
        for item in produce(worker, *args):
            if not post(pickle.dumps(("ok", item), protocol=pickle.HIGHEST_PROTOCOL)):
                break
    except Exception:  # noqa: BLE001 -- any failure goes to the parent, which raises it
        post(pickle.dumps(("error", traceback.format_exc())))
    post(None)
    while sender.is_alive() and not broken.is_set():
        sender.join(timeout=0.2)
    os._exit(0)
