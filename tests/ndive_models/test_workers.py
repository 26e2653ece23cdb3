"""The generator's worker pool never leaves the parent waiting forever.

Each failure a worker can have (an exception, a kill between messages, death in the middle of a
message, a parent that stops reading or dies) must end promptly in a clear error or exit.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ndive_models._signals import signals_deferred
from ndive_models.data import partial_path
from ndive_models.generate import GenerationConfig, _workers, generate
from ndive_models.generate._workers import WorkerError, WorkerPool

PROMPT = 20.0  # seconds: generous on a loaded 2-core machine; a hang would be 600 s


# --- producers, run in the worker processes (module-level so that they can be pickled) ---


def _counting(worker, size):
    """Endless items (worker, k, payload of ``size`` bytes)."""
    k = 0
    while True:
        yield worker, k, np.full(size, k % 251, dtype=np.uint8)
        k += 1


def _failing(worker, after):
    for k in range(after):
        yield worker, k
    raise ValueError(f"boom in worker {worker}")


def _cut_message(worker):
    """Write a frame header promising 1 MB, then 10 bytes of it, then die."""
    from ndive_models.generate import _child

    yield "first"
    time.sleep(0.5)  # let the sender thread finish writing "first"
    os.write(_child.data_fd, struct.pack("!i", 1_000_000) + b"0123456789")
    os._exit(3)


def _silent(worker):
    time.sleep(3600)
    yield None


def test_items_arrive_round_robin_in_order():
    with WorkerPool(2, _counting, (1000,)) as pool:
        got = [pool.get(k % 2) for k in range(8)]
    assert [(w, k) for w, k, _ in got] == [(k % 2, k // 2) for k in range(8)]
    assert all(np.all(p == k) for _, k, p in got)


def test_exception_in_worker_is_raised_with_its_traceback():
    with WorkerPool(2, _failing, (2,)) as pool:
        assert pool.get(1) == (1, 0)
        assert pool.get(1) == (1, 1)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=r"worker 1 .*failed") as info:
            pool.get(1)
    assert "ValueError: boom in worker 1" in str(info.value)
    assert time.monotonic() - t0 < PROMPT


def test_killed_worker_is_a_clear_error_promptly():
    with WorkerPool(2, _counting, (200_000,)) as pool:
        pool.get(0)
        os.kill(pool.procs[1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="worker 1") as info:
            for _ in range(100):  # items already in the pipe may still arrive first
                pool.get(1)
    assert "SIGKILL" in str(info.value)
    assert time.monotonic() - t0 < PROMPT


def test_message_cut_short_is_a_clear_error_not_a_hang():
    with WorkerPool(1, _cut_message) as pool:
        assert pool.get(0) == "first"
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="during a message") as info:
            pool.get(0)
    assert "exit code 3" in str(info.value)
    assert time.monotonic() - t0 < PROMPT


def test_silent_live_worker_times_out():
    with WorkerPool(1, _silent, stall_timeout=1.0, poll_interval=0.1) as pool:
        with pytest.raises(WorkerError, match=r"sent nothing for 1\.0 s"):
            pool.get(0)


def test_close_ends_workers_blocked_on_a_full_pipe():
    pool = WorkerPool(2, _counting, (2_000_000,))
    pool.get(0)
    time.sleep(1.0)  # both workers now wait to write 2 MB items nobody reads
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 10.0
    assert all(p.poll() is not None for p in pool.procs)


def test_close_is_not_broken_off_by_ctrl_c_and_delivers_it_afterwards(terminal_ctrl_c, monkeypatch):
    """A Ctrl-C during close() waits until every worker is ended, then is raised."""
    pool = WorkerPool(2, _counting, (1000,))
    pool.get(0)
    real_end = _workers._end

    def end_with_ctrl_c(proc, deadline):
        signal.raise_signal(signal.SIGINT)  # the default handler would raise here
        real_end(proc, deadline)

    monkeypatch.setattr(_workers, "_end", end_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        pool.close()
    assert all(p.returncode is not None for p in pool.procs)  # both ended and reaped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_close_and_get_do_not_need_popens_lock():
    """A KeyboardInterrupt inside Popen.poll can leave its lock held; nothing may hang on it."""
    pool = WorkerPool(2, _counting, (1000,))
    for proc in pool.procs:
        assert proc._waitpid_lock.acquire(blocking=False)  # as if leaked
    assert pool.get(0)[:2] == (0, 0) and pool.get(1)[:2] == (1, 0)
    t0 = time.monotonic()
    pool.close()  # the workers exit at once; close must notice without Popen.wait
    assert time.monotonic() - t0 < 5.0
    for proc in pool.procs:
        with pytest.raises(ChildProcessError):  # reaped
            os.waitpid(proc.pid, os.WNOHANG)


def test_signals_deferred_records_then_delivers_first_signal(terminal_ctrl_c):
    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)
                assert seen == []  # held back, and the block went on
                seen.append("end of block")
        assert seen == ["end of block"]  # only the first signal is delivered again
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old)


# --- the generator end to end ---


def test_generate_with_a_crashing_worker_fails_clearly_and_leaves_no_file(
    generate_extra, tmp_path, monkeypatch
):
    out = tmp_path / "crash.h5"
    pools, killed = [], []
    real_get = WorkerPool.get

    def get(self, w):
        if not pools:
            pools.append(self)
        return real_get(self, w)

    monkeypatch.setattr(WorkerPool, "get", get)

    def kill_a_worker_mid_run():
        while not (pools and partial_path(out).exists()):
            time.sleep(0.05)
        time.sleep(2.0)  # batches are flowing and being written
        os.kill(pools[0].procs[1].pid, signal.SIGKILL)
        killed.append(time.monotonic())

    threading.Thread(target=kill_a_worker_mid_run, daemon=True).start()
    with pytest.raises(WorkerError, match=r"worker 1 .*SIGKILL"):
        generate(GenerationConfig(n_jets=10**6, workers=2, batch_events=10), out, progress=False)
    assert killed and time.monotonic() - killed[0] < PROMPT
    assert not out.exists() and not partial_path(out).exists()
    assert all(p.poll() is not None for p in pools[0].procs)  # the other worker was ended too


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_workers_exit_when_the_parent_is_killed(generate_extra, tmp_path):
    out = tmp_path / "orphans.h5"
    cmd = [sys.executable, "-m", "ndive_models.cli", "generate", "--jets", "1000000",
           "--out", str(out), "--workers", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if partial_path(out).exists():
                break
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.kill()  # SIGKILL: no cleanup code runs in the parent
        proc.wait(timeout=30)
        t0 = time.monotonic()
        while _alive(workers) and time.monotonic() - t0 < PROMPT:
            time.sleep(0.1)
        assert not _alive(workers)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()  # only the .partial of a killed run can remain


def test_generate_from_an_unguarded_script_after_importing_jax(generate_extra, tmp_path):
    """No ``if __name__ == "__main__"`` guard needed, and a multithreaded parent is fine."""
    pytest.importorskip("jax")
    script = tmp_path / "script.py"
    out = tmp_path / "s.h5"
    script.write_text(
        "import jax.numpy as jnp\n"
        "jnp.ones(3).sum()  # JAX's thread pools are running\n"
        "from ndive_models.generate import GenerationConfig, generate\n"
        f"r = generate(GenerationConfig(n_jets=40, workers=2, batch_events=5), {str(out)!r},\n"
        "             progress=False)\n"
        "print('jets', r.n_jets)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "jets 40" in res.stdout and out.exists()
