"""The taggers: ``NDIVE``, the FTAG tagger ``Baseline`` (the paper's GN2-like baseline, and
DIPS, GN2, GN3 as its settings) and ``FtagNdive`` (the NDIVE block inside any of them), built
from a :class:`ModelConfig` by :func:`build_model` (see ``docs/paper.md``, ``docs/models.md``).

Every model takes a batch dict (see :mod:`ndive_models.data.loader`) and returns a dict of
outputs; ``model.loss_terms(outputs, batch)`` returns ``{name: (sum, count, weight)}`` and
:func:`total_loss` combines them (see :mod:`ndive_models.models.losses`).

Modules, by component: :mod:`~ndive_models.models.config` (``ModelConfig``),
:mod:`~ndive_models.models.layers` (normalisation, attention, the track processor),
:mod:`~ndive_models.models.features` (track features, the base class),
:mod:`~ndive_models.models.losses`, and one module per model:
:mod:`~ndive_models.models.ndive`, :mod:`~ndive_models.models.baseline`,
:mod:`~ndive_models.models.ftag_ndive`.
"""

from __future__ import annotations

from torch import nn

from .baseline import Baseline
from .config import CLASS_SETS, MODEL_NAMES, WEIGHT_MODES, ModelConfig
from .ftag_ndive import FtagNdive
from .losses import class_labels, combine, gn2_loss_terms, total_loss, vertex_mae
from .ndive import NDIVE, finite_grad

__all__ = [
    "CLASS_SETS", "MODELS", "MODEL_NAMES", "NDIVE", "WEIGHT_MODES", "Baseline", "FtagNdive",
    "ModelConfig", "build_model", "class_labels", "combine", "finite_grad", "gn2_loss_terms",
    "total_loss", "vertex_mae",
]  # fmt: skip

#: ``ModelConfig.name`` -> model class. A new model registers here and in ``MODEL_NAMES``.
MODELS = {"baseline": Baseline, "ndive": NDIVE, "ftag_ndive": FtagNdive}


def build_model(cfg: ModelConfig, stats: dict, bz: float) -> nn.Module:
    """The model named by ``cfg.name`` with input normalisation ``stats`` (``feature_stats``)
    and field ``bz`` [T]."""
    return MODELS[cfg.name](cfg, stats, bz)
