"""Jet files in the FTAG layout: schema, checked reader, atomic writer, validation summary;
and the way from a file to model inputs: the batch loader and the input normalisation.

The layout is defined once in :mod:`ndive_models.data.schema`;
:mod:`ndive_models.data.loader` turns a file into a batch dict of tensors and
:mod:`ndive_models.data.normalisation` computes the input statistics.
"""

import importlib

from . import schema
from ._atlas import add_atlas_fields
from ._io import (
    JetWriter,
    SchemaError,
    check_layout,
    convert,
    partial_path,
    read_attrs,
    read_jets,
)

__all__ = [
    "HF_ORIGINS",
    "JetWriter",
    "SchemaError",
    "add_atlas_fields",
    "arrays_to_batch",
    "check_layout",
    "convert",
    "feature_stats",
    "index_batch",
    "load_batch",
    "partial_path",
    "read_attrs",
    "read_jets",
    "schema",
    "to_device",
]

# The loader and the normalisation need torch: they load on first use, so that reading and
# writing files (e.g. in the generator's worker processes) does not import it.
_LAZY = {"HF_ORIGINS": "loader", "arrays_to_batch": "loader", "index_batch": "loader",
         "load_batch": "loader", "to_device": "loader", "feature_stats": "normalisation"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
