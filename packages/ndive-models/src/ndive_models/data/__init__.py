"""Jet files in the FTAG layout: schema, checked reader, atomic writer, validation summary.

The layout is defined once in :mod:`ndive_models.data.schema`.
"""

from . import schema
from ._io import JetWriter, SchemaError, check_layout, partial_path, read_attrs, read_jets

__all__ = [
    "JetWriter",
    "SchemaError",
    "check_layout",
    "partial_path",
    "read_attrs",
    "read_jets",
    "schema",
]
