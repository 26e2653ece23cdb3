"""Backend-specific speed helpers, all in one place. None of them changes a number (the
recommended XLA options of :func:`jax_compiler_options` change rounding only).

* :func:`barrier`: materialise intermediate arrays once (JAX: XLA would re-compute them in
  every consumer); identity elsewhere.
* :func:`sincos`, :func:`cot`, :func:`atan`: on JAX float64, vectorisable polynomial kernels
  in place of XLA:CPU's scalar libm calls; the backend's own functions elsewhere.
* :func:`jax_compiler_options`: the XLA options recommended for ``jax.jit`` of code that
  calls the fit on CPU (public as ``vertexfit.jax_compiler_options``).
* :func:`fori_loop`: a rolled ``jax.lax.fori_loop`` on JAX (compile time independent of the
  trip count), a Python loop elsewhere.
* :func:`map_jets`: run a function over cache-sized chunks of jets (``jax.lax.map`` in one
  program, NumPy threads, or a loop); :data:`CHUNK_ELEMENTS` and :func:`num_threads` size it.
* :func:`compiled`: a unit of the fit (one Gauss-Newton step, the implicit backward) behind
  ``torch.compile``; :func:`compile_status` says what was compiled and what failed.

The measurements behind each choice are in ``docs/fit.md`` ("Speed").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import os
import threading
import time
import warnings

from ._xp import backend_name

__all__ = [
    "CHUNK_ELEMENTS",
    "atan",
    "barrier",
    "chunk_jets",
    "compile_status",
    "compiled",
    "cot",
    "fori_loop",
    "jax_compiler_options",
    "map_jets",
    "num_threads",
    "sincos",
]


# --------------------------------------------------------------------------------------------
# materialising barrier
# --------------------------------------------------------------------------------------------
def barrier(xp, tree):
    """Materialise the arrays of ``tree`` (nested lists/dicts/tuples) before further use.

    Identity on every backend but JAX. XLA:CPU re-computes ("duplicates") a cheap shared
    subgraph inside every fusion that consumes it, which for the fit's per-track linear
    algebra multiplies the compiled arithmetic. ``jax.lax.optimization_barrier`` does not
    prevent this on CPU (it is removed before fusion), so on JAX the arrays pass through a
    while loop whose trip count XLA cannot know (:func:`_materialise`): its carry is a real
    buffer, computed once. Values (and derivatives: identity JVP) are unchanged. Pass only
    arrays that are not already the output of a barrier: each one costs a small kernel.
    """
    if backend_name(xp) != "jax":
        return tree
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    idx = [i for i, a in enumerate(leaves)
           if isinstance(a, jax.Array) and xp.isdtype(a.dtype, "real floating")]
    if not idx:
        return tree
    out = _materialise()(*[leaves[i] for i in idx])
    for i, a in zip(idx, out):
        leaves[i] = a
    return jax.tree_util.tree_unflatten(treedef, leaves)


@functools.cache
def _materialise():
    """The JAX materialising identity (built on first use; JAX is imported lazily)."""
    import jax
    import jax.numpy as jnp

    def touch(x, z):
        # rewrite one element in place, as x - 0.0 (== x bit for bit): XLA cannot prove the
        # carry loop-invariant, and the loop body is one tiny in-place kernel per array (a
        # whole-array x - z cost a full read and write, and ~5 ms of LLVM time, per array)
        if x.ndim == 0:
            return x - z.astype(x.dtype)
        if 0 in x.shape:
            return x
        start = (0,) * x.ndim
        one = jax.lax.dynamic_slice(x, start, (1,) * x.ndim)
        return jax.lax.dynamic_update_slice(x, one - z.astype(x.dtype), start)

    @jax.custom_jvp
    def materialise(*arrays):
        # one element decides the trip count (1, or 0 if it is NaN) and the exact zero that
        # the body subtracts: x - 0.0 == x bit for bit (signed zeros, inf, NaN included)
        # and neither is a compile-time constant, so XLA keeps the loop and its buffers
        x0 = jnp.reshape(arrays[0], (-1,))[:1]
        ok = x0 == x0
        n = jnp.sum(ok.astype(jnp.int32))
        zero = jnp.sum(ok.astype(arrays[0].dtype)) * 0.0

        def body(state):
            i, z, *xs = state
            return (i + 1, z, *[touch(x, z) for x in xs])

        out = jax.lax.while_loop(lambda s: s[0] < n, body, (jnp.int32(0), zero, *arrays))
        return tuple(out[2:])

    @materialise.defjvp
    def _jvp(primals, tangents):  # identity: tangents pass through, linear and transposable
        return materialise(*primals), tuple(tangents)

    return materialise


# --------------------------------------------------------------------------------------------
# elementary functions: on JAX float64 short, vectorisable polynomial kernels accurate to a
# few ulp (XLA:CPU calls scalar libm functions for these); every other backend and dtype
# uses its own functions
# --------------------------------------------------------------------------------------------
_PIO2_HI = 1.5707963267341256  # pi/2 with 33 significant bits: k * _PIO2_HI is exact
_PIO2_LO = math.pi / 2 - _PIO2_HI  # exact: the rest of the float64 pi/2
_PIO2_LO2 = 6.123233995736766e-17  # pi/2 - float64(pi/2)
# Taylor coefficients of sin(r)/r - 1 and cos(r) - 1 in z = r^2, up to r^18: for
# |r| <= pi/4 the first omitted term is < 1e-19 relative
_SIN_C = [(-1) ** n / math.factorial(2 * n + 1) for n in range(1, 9)]
_COS_C = [(-1) ** n / math.factorial(2 * n) for n in range(1, 10)]
# atan(t)/t in u = t^2 for |t| <= tan(pi/16) = 0.199: omitted term < 1e-20 relative
_ATAN_C = [(-1) ** n / (2 * n + 1) for n in range(14)]


def _poly(coeffs, z):
    out = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        out = out * z + c
    return out


def _use_kernels(xp, x) -> bool:
    return backend_name(xp) == "jax" and x.dtype == xp.float64


def sincos(xp, x):
    """``(sin x, cos x)``; on JAX float64 one shared range reduction and two polynomials.

    Accurate to ~2 ulp for |x| < 1e6 (Cody-Waite reduction by pi/2 in three parts).
    """
    if not _use_kernels(xp, x):
        return xp.sin(x), xp.cos(x)
    k = xp.round(x * (2.0 / math.pi))
    r = ((x - k * _PIO2_HI) - k * _PIO2_LO) - k * _PIO2_LO2
    z = r * r
    s = r + r * z * _poly(_SIN_C, z)
    c = 1.0 + z * _poly(_COS_C, z)
    q = k - 4.0 * xp.floor(k * 0.25)  # quadrant 0..3
    odd = (q == 1.0) | (q == 3.0)
    sin = xp.where(odd, c, s)
    cos = xp.where(odd, s, c)
    sin = xp.where(q >= 2.0, -sin, sin)
    cos = xp.where((q == 1.0) | (q == 2.0), -cos, cos)
    return sin, cos


def cot(xp, x):
    """``1 / tan(x)``."""
    if not _use_kernels(xp, x):
        return 1.0 / xp.tan(x)
    s, c = sincos(xp, x)
    return c / s


def atan(xp, x):
    """``atan(x)``; on JAX float64 ``atan(x) = sign(x) pi/2 - atan(1/x)`` for |x| > 1, two
    half-angle reductions ``t -> t / (1 + sqrt(1 + t^2))`` (to |t| <= tan(pi/16)) and a
    polynomial: accurate to a few ulp for every x, inf included."""
    if not _use_kernels(xp, x):
        return xp.atan(x)
    big = xp.abs(x) > 1.0
    t = xp.where(big, -1.0 / xp.where(big, x, 1.0), x)
    for _ in range(2):
        t = t / (1.0 + xp.sqrt(1.0 + t * t))
    core = 4.0 * t * _poly(_ATAN_C, t * t)
    return xp.where(big, xp.where(x > 0, math.pi / 2, -math.pi / 2) + core, core)


# --------------------------------------------------------------------------------------------
# XLA compiler options for the caller's jax.jit
# --------------------------------------------------------------------------------------------
# XLA:CPU's default ("fusion emitter") code generator lowers every fusion through MLIR and
# compiles it on its own; the fit's programs have hundreds of small fusions, and the
# classic elemental emitter compiles them in about half the time into code that also runs
# 10-25% faster on them (docs/fit.md, "Speed"; same arithmetic, results agree to rounding).
# A library cannot set the options of its caller's jax.jit, hence this recommendation.
_JAX_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def jax_compiler_options() -> dict:
    """Recommended ``compiler_options`` for ``jax.jit`` of code that calls the fit on CPU::

        f = jax.jit(loss, compiler_options=vertexfit.jax_compiler_options())

    About halves XLA's compile time of :func:`vertexfit.fit` and its gradients on CPU, and
    the compiled fit runs no slower (docs/fit.md, "Speed"). Returns an empty dict where the
    default JAX backend is not the CPU or where this jaxlib does not know the options (the
    check compiles a tiny function once per process). A new dict on every call.
    """
    return dict(_checked_jax_cpu_options())


@functools.cache
def _checked_jax_cpu_options() -> tuple:
    import jax
    import jax.numpy as jnp

    if jax.default_backend() != "cpu":
        return ()
    try:
        jax.jit(lambda x: x + 1.0, compiler_options=_JAX_CPU_OPTIONS).lower(
            jnp.zeros(2, jnp.float32)).compile()
    except Exception:  # an XLA without the option: plain jax.jit, nothing lost but speed
        return ()
    return tuple(_JAX_CPU_OPTIONS.items())


# --------------------------------------------------------------------------------------------
# loops and chunks
# --------------------------------------------------------------------------------------------
def fori_loop(xp, n: int, body, state):
    """``for i in range(n): state = body(i, state)``; ``jax.lax.fori_loop`` on JAX.

    On JAX a rolled loop keeps the compiled graph (and the compile time) independent of
    ``n``; elsewhere it is a plain Python loop over a static count.
    """
    if backend_name(xp) == "jax":
        import jax

        return jax.lax.fori_loop(0, n, body, state)
    for i in range(n):
        state = body(i, state)
    return state


# Track slots per chunk of jets: keeps the ~100 live per-track temporaries of the fit in cache
CHUNK_ELEMENTS = {"numpy": 49152, "torch": 65536, "other": 32768, "jax": 16384}


def chunk_jets(name: str, n_tracks: int) -> int:
    """Jets per chunk on backend ``name`` for jets of ``n_tracks`` track slots."""
    return max(1, CHUNK_ELEMENTS[name] // max(n_tracks, 1))


def num_threads() -> int:
    """Threads the NumPy fit uses for batches of more than one chunk (~2000 jets).

    ``VERTEXFIT_NUM_THREADS`` if set (1 disables threading), else the CPUs this process
    may run on, at most 8. JAX and PyTorch use their own thread pools.
    """
    env = os.environ.get("VERTEXFIT_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"VERTEXFIT_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def map_jets(xp, fn, args, fills, step, *, threads=1):
    """``fn(*args)`` evaluated on chunks of ``step`` jets, outputs joined along the jets.

    ``args`` are arrays whose first axis is the jet axis (or ``None``, passed as is); ``fn``
    returns a tuple (or NamedTuple) of such arrays. On JAX the chunks run in one
    ``jax.lax.map`` (one program, traced once), the last chunk padded with jets made of
    ``fills`` (one value per argument, broadcast to a jet's shape); with ``threads`` > 1 the
    chunks run in a thread pool (NumPy releases the GIL in its loops); otherwise in a loop.
    Every jet is computed on its own, so the chunking does not change a number.
    """
    B = next(a for a in args if a is not None).shape[0]
    if backend_name(xp) == "jax":
        import jax

        n = -(-B // step)
        chunks = [None if a is None else
                  xp.reshape(_pad(xp, a, n * step - B, f), (n, step) + tuple(a.shape[1:]))
                  for a, f in zip(args, fills)]
        out = jax.lax.map(lambda c: fn(*c), chunks)
        return jax.tree_util.tree_map(
            lambda o: xp.reshape(o, (n * step,) + tuple(o.shape[2:]))[:B], out)

    def run(s):
        sl = slice(s, min(B, s + step))
        return fn(*[None if a is None else a[sl] for a in args])

    if threads > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(run, range(0, B, step)))
    else:
        parts = [run(s) for s in range(0, B, step)]
    joined = [xp.concat([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]
    return parts[0]._make(joined) if hasattr(parts[0], "_make") else tuple(joined)


def _pad(xp, a, pad, value):
    """``a`` with ``pad`` more entries along axis 0, each ``value`` (broadcast)."""
    if pad == 0:
        return a
    v = xp.broadcast_to(xp.asarray(value, dtype=a.dtype), (pad,) + tuple(a.shape[1:]))
    return xp.concat([a, v], axis=0)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------
# Inductor's C++ backend writes all the loop nests of a traced region into one C++ function
# until that function has MAX_FUSED_KERNEL_ARGS_NUM (500) buffer arguments. Traced whole,
# the fit (eleven linearisations), and the implicit backward alone (order-2 jets: a
# 2.5 MB, 23,000-line function), become functions on which gcc 12 dies (internal compiler
# error in gimple_duplicate_bb; max_fusion_size does not split them). The units compiled
# here are one Gauss-Newton step (vertexfit._fit._step, ~1,300 tensor operations, called
# n_iter + 1 times per fit) and the implicit backward (vertexfit._implicit.core_vjp), with
# at most _KERNEL_ARGS buffers per C++ function: the same loops, in several functions of
# a size gcc compiles (the backward: 0.4 MB of C++). dynamic=True: one compilation serves
# every batch size and track-slot count. Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR,
# on by default) keeps the kernels across processes.
_KERNEL_ARGS = 64
_COMPILE_LOCK = threading.Lock()
_UNITS: dict = {}     # unit name -> its runner (one torch.compile wrapper per unit)
_SECONDS: dict = {}   # unit name -> seconds of its first compiled call
_FAILED: dict = {}    # unit name -> the exception that made it eager


def compile_status() -> dict:
    """What ``fit(..., compile=True)`` compiled in this process.

    Returns ``{"seconds": {unit: s}, "failed": {unit: message}}``: for each compiled unit
    (``"fit step [helix]"``, ``"backward [helix]"``) the seconds of its first call
    (compilation, or the load from Inductor's disk cache, plus one run), and for each unit
    whose compilation failed (it runs eagerly since) the error in one line.
    """
    with _COMPILE_LOCK:
        return {"seconds": dict(_SECONDS),
                "failed": {k: _one_line(e) for k, e in _FAILED.items()}}


def compiled(unit: str, fn):
    """``fn`` (PyTorch tensors in and out) compiled by ``torch.compile`` as one unit named
    ``unit``: dynamic shapes, ``fullgraph``. The first ``fn`` given for a name is the one
    compiled (a unit name stands for one function). It runs eagerly instead (same
    arithmetic) while autograd records (double backward), inside ``torch.func``
    transforms, while ``torch.compile`` or ``torch.jit.trace`` trace the caller, when the
    environment sets ``VERTEXFIT_COMPILE=0`` (a switch for debugging; the test suite sets
    it except where it tests compilation), and after its compilation failed (one
    ``RuntimeWarning``, then eager for the process).
    """
    with _COMPILE_LOCK:
        if unit not in _UNITS:
            _UNITS[unit] = _compile_unit(unit, fn)
        return _UNITS[unit]


def _compile_unit(unit, eager):
    import torch
    from torch.utils._pytree import tree_map_only

    # a partial's function is compiled itself, its bound arguments (namespace, model name)
    # passed: every unit keeps its own code object, hence its own Dynamo cache (partials
    # share one wrapper's code object, and with it one cache and one recompile limit)
    func, bound, kw = ((eager.func, eager.args, eager.keywords)
                       if isinstance(eager, functools.partial) else (eager, (), {}))
    compiled_func = torch.compile(func, dynamic=True, fullgraph=True)

    def fast(*args):
        # detached and contiguous: a compiled unit runs without autograd recording, and
        # requires_grad or strides (a cotangent of a sum is an expanded tensor), which
        # differ from caller to caller, must not make Dynamo compile it again
        args = tuple(a.detach().contiguous() if isinstance(a, torch.Tensor)
                     else a if a is None
                     else tree_map_only(torch.Tensor, lambda t: t.detach().contiguous(), a)
                     for a in args)  # (pytree's walk of flat arguments costs 20 us a call)
        return compiled_func(*bound, *args, **kw)

    def run(*args):
        if unit in _FAILED or not _can_run_compiled():
            return eager(*args)
        first = unit not in _SECONDS
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # tracing array_api_compat's namespace checks: cached pure functions
                warnings.filterwarnings("ignore", message="Dynamo detected a call to a "
                                        "`functools.lru_cache`", category=UserWarning)
                with _small_cpp_functions():
                    out = fast(*args)
        except Exception as err:  # any compiler failure: this unit runs eagerly from now on
            with _COMPILE_LOCK:
                _FAILED[unit] = err
            warnings.warn(f"vertexfit: torch.compile of the {unit} failed ({_one_line(err)}); "
                          f"running it eagerly", RuntimeWarning, stacklevel=2)
            return eager(*args)
        if first:
            with _COMPILE_LOCK:
                _SECONDS.setdefault(unit, time.perf_counter() - t0)
        return out

    return run


@contextlib.contextmanager
def _small_cpp_functions():
    """Inductor's C++ functions split at :data:`_KERNEL_ARGS` buffer arguments while a unit
    compiles (a class attribute of Inductor's C++ scheduler, restored after; a PyTorch
    without it compiles as it would)."""
    try:
        from torch._inductor.codegen.cpp import CppScheduling
    except ImportError:
        yield
        return
    old = getattr(CppScheduling, "MAX_FUSED_KERNEL_ARGS_NUM", None)
    if old is None:
        yield
        return
    CppScheduling.MAX_FUSED_KERNEL_ARGS_NUM = min(old, _KERNEL_ARGS)
    try:
        yield
    finally:
        CppScheduling.MAX_FUSED_KERNEL_ARGS_NUM = old


def _can_run_compiled() -> bool:
    import torch

    if os.environ.get("VERTEXFIT_COMPILE", "1") == "0":  # switched off (debugging, tests)
        return False
    return not (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()
                or torch.compiler.is_compiling() or torch.jit.is_tracing())


def _one_line(err) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
