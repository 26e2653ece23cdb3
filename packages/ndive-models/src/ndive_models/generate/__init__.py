"""Event generation: Pythia 8 ttbar at 14 TeV, anti-kT 0.4 jets, a parametric ATLAS-like tracker.

Needs the optional extra: ``pip install 'ndive-models[generate]'``. The track parameters come
from :func:`vertexfit.perigee` (exact helix); the physics choices are in docs/generation.md.
"""

from ._pipeline import (
    INSTALL_HINT,
    GenerationConfig,
    GenerationResult,
    MissingExtraError,
    generate,
    require_generate_extra,
    worker_seeds,
)
from ._workers import WorkerError

__all__ = [
    "INSTALL_HINT",
    "GenerationConfig",
    "GenerationResult",
    "MissingExtraError",
    "WorkerError",
    "generate",
    "require_generate_extra",
    "worker_seeds",
]
