"""Developer sessions. Run ``nox -l`` to list them; each installs what it needs.

* ``nox -s tests``  -- the whole test suite on every backend (NumPy, array-api-strict, JAX,
  PyTorch; float64 and float32). Slow, large-scale checks are marked ``slow`` and skipped;
  run them with ``nox -s tests -- -m slow``.
* ``nox -s demo``   -- the main job on a small built-in default (see README).
* ``nox -s bench``  -- cross-backend benchmarks; writes benchmarks/results/.
* ``nox -s paper``  -- reproduce the NDIVE paper's comparison (long; see README).
* ``nox -s docs``   -- build the documentation site with warnings as errors.
* ``nox -s lint``   -- ruff.
* ``nox -s interop`` -- the ATLAS tools (salt, puma) reading the files and predictions.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# Pinned here, not in the packages' metadata: a plain `torch` pulls several GB of CUDA wheels;
# torch 2.13.0 has a CPU build on these machines.
TORCH = "torch==2.13.0"
JAX = "jax==0.10.2"
PACKAGES = ["-e", "packages/vertexfit[all]", "-e", "packages/ndive-models[generate,plots]"]
# pytest-timeout: a hung test (e.g. a stuck worker process) fails after `timeout` seconds
# instead of stalling CI.
# atlas-ftag-tools: the tests read the files and predictions with ftag's H5Reader and compare
# its rejections with ours (tests/ndive_models/test_ftag_tools.py).
TEST_DEPS = [
    "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "array-api-strict>=2.2", "pyyaml",
    "atlas-ftag-tools>=0.3.6",
]


def _install(session, *extra):
    session.install(TORCH, JAX, *PACKAGES, *extra)


@nox.session(python=PYTHON)
def tests(session):
    """Run the test suite (all backends). Extra arguments go to pytest."""
    _install(session, *TEST_DEPS)
    session.run("python", "-m", "pytest", *(session.posargs or []),
                env={"JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "2"})


@nox.session(python=PYTHON)
def interop(session):
    """The ATLAS tools end to end (tests marked ``interop``): salt's dataset reads a generated
    file, puma reads predictions and draws the ROC. salt-ml pins an older torch, so it goes in
    with --no-deps next to the one dependency its dataset module needs (lightning)."""
    _install(session, *TEST_DEPS, "puma-hep>=0.5.6", "lightning")
    session.install("--no-deps", "salt-ml")
    session.run("python", "-m", "pytest", "-m", "interop", *session.posargs,
                env={"JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "2"})


@nox.session(python=PYTHON)
def lint(session):
    """ruff over the whole repository."""
    session.install("ruff==0.17.6")  # pinned: new ruff releases add rules
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def demo(session):
    """The main job: toy and ttbar vertex fits, the differentiable fit, a short training."""
    _install(session, "pyyaml")
    session.run("python", "-m", "ndive_models.demo", *session.posargs,
                env={"JAX_PLATFORMS": "cpu"})


@nox.session(python=PYTHON)
def bench(session):
    """Cross-backend benchmarks; results in benchmarks/results/<machine>.{json,md,png}."""
    _install(session, "pyyaml")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"JAX_PLATFORMS": "cpu"})


@nox.session(python=PYTHON)
def paper(session):
    """Reproduce the paper's baseline vs FTAG+NDIVE comparison (hours at full scale)."""
    _install(session, "pyyaml")
    session.run("python", "-m", "ndive_models.paper", *session.posargs)


@nox.session(python=PYTHON)
def docs(session):
    """Build the documentation site (mkdocs-material + mkdocstrings), warnings as errors."""
    _install(session, "mkdocs-material>=9.5", "mkdocstrings[python]>=0.25", "pyyaml")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
