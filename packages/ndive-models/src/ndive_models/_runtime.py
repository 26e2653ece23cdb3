"""Process settings shared by ``ndive train``, ``evaluate``, ``demo`` and ``paper``: PyTorch's
intra-op threads and the report of the compiled vertex fit (docs/training.md)."""

from __future__ import annotations

import sys
import warnings

__all__ = ["DEFAULT_THREADS", "compile_report", "quiet_compile_warnings", "set_threads"]

# One thread per process: the taggers' operations at batch 100 are too small for a second
# thread to pay, and on a shared machine PyTorch's default (every core) made two trainings
# on 2 busy cores 6x slower each; one thread each keeps them near their solo speed
# (docs/training.md, docs/benchmarks.md).
DEFAULT_THREADS = 1


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (``None``: :data:`DEFAULT_THREADS`; 0: leave PyTorch's
    choice). Returns the number in effect. Raises ValueError for a negative number."""
    import torch

    threads = DEFAULT_THREADS if threads is None else threads
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads must be a non-negative integer, got {threads!r}")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def quiet_compile_warnings() -> None:
    """Silence vertexfit's compile-failure warning: :func:`compile_report` says it in one
    line instead."""
    warnings.filterwarnings("ignore", message="vertexfit: torch.compile", category=RuntimeWarning)


def compile_report(prefix: str, seconds: float | None = None, file=None) -> str | None:
    """One line on the compiled vertex fit after the first step: compiled (how long the
    first step took: compilation or the load from the disk cache) or failed (the run
    continues eagerly). ``None`` (nothing printed) if nothing was compiled or tried."""
    import vertexfit

    status = vertexfit.compile_status()
    if status["failed"]:
        unit, msg = next(iter(status["failed"].items()))
        line = f"{prefix} torch.compile of the vertex fit failed ({unit}: {msg}); running eagerly"
    elif status["seconds"]:
        took = "" if seconds is None else f", first step {seconds:.1f} s"
        line = (f"{prefix} vertex fit compiled ({', '.join(sorted(status['seconds']))}{took}; "
                f"cached on disk for later runs)")
    else:
        return None
    print(line, file=file or sys.stderr, flush=True)
    return line
