"""Shared fixtures: one ~2,000-jet ttbar sample, generated once per test session."""

from __future__ import annotations

import pytest

N_JETS = 2000
SEED = 20231019


def _need_generate_extra():
    for mod in ("pythia8mc", "fastjet", "awkward"):
        pytest.importorskip(mod, reason="needs pip install 'ndive-models[generate]'")


@pytest.fixture(scope="session")
def sample_path(tmp_path_factory):
    """Path of a 2,000-jet file (2 workers, MPI on, all flavours)."""
    _need_generate_extra()
    from ndive_models.generate import GenerationConfig, generate

    path = tmp_path_factory.mktemp("ndive") / "ttbar.h5"
    generate(
        GenerationConfig(n_jets=N_JETS, seed=SEED, workers=2), path, progress=False
    )
    return path


@pytest.fixture(scope="session")
def sample(sample_path):
    """(jets, tracks) structured arrays of the session sample."""
    from ndive_models.data import read_jets

    return read_jets(sample_path)


@pytest.fixture(scope="session")
def summary(sample):
    from ndive_models.data.validation import summarize

    return summarize(*sample)


@pytest.fixture
def generate_extra():
    """Skip unless Pythia, fastjet and awkward are installed."""
    _need_generate_extra()


@pytest.fixture
def terminal_ctrl_c():
    """SIGINT raises KeyboardInterrupt, as in a terminal, for the duration of the test.

    A test run started as a background job of a non-interactive shell (``nox -s tests &``)
    inherits SIGINT *ignored*, and Python then keeps ignoring it; tests of Ctrl-C handling
    must not depend on how the test run was started.
    """
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
