"""Reading and atomically writing jet files in the layout of :mod:`ndive_models.data.schema`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .._files import partial_path
from .._signals import signals_deferred
from . import schema


class SchemaError(ValueError):
    """A file does not have the layout of :mod:`ndive_models.data.schema`."""


class JetWriter:
    """Append jets and tracks to a new file, which gets its final name only on success.

    The data go to ``<path>.partial``; :meth:`close` writes ``complete = True`` and renames it
    with :func:`os.replace` (atomic on one file system), so an interrupted run never leaves a
    file that looks complete. A stale ``.partial`` from a killed run is overwritten.
    Use as a context manager: on an exception the partial file is deleted.

    Args:
        path: final file name.
        max_tracks: track slots per jet (second dimension of ``tracks``).
        attrs: file attributes (str, int, float, bool; dicts/lists are stored as JSON).
        chunk_jets: HDF5 chunk length along the jet axis.
    """

    def __init__(self, path, max_tracks: int, attrs: dict | None = None, chunk_jets: int = 1024):
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.max_tracks = int(max_tracks)
        self.n = 0
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        try:  # an interruption (Ctrl-C, SIGTERM) while setting up leaves no file either
            self._file = h5py.File(self.tmp, "w", track_order=True)
            for key, value in {**schema.CONVENTIONS, **(attrs or {})}.items():
                self._file.attrs[key] = _attr(value)
            self._file.attrs["max_tracks"] = self.max_tracks
            self._file.attrs["complete"] = False
            # lzf: fast and available in every h5py build; chunks keep appends and slices cheap.
            self._jets = self._file.create_dataset(
                "jets", shape=(0,), maxshape=(None,), dtype=schema.JET_DTYPE,
                chunks=(chunk_jets,), compression="lzf", track_times=False,
            )  # fmt: skip
            self._tracks = self._file.create_dataset(
                "tracks", shape=(0, self.max_tracks), maxshape=(None, self.max_tracks),
                dtype=schema.TRACK_DTYPE, chunks=(chunk_jets, self.max_tracks),
                compression="lzf", track_times=False,
            )  # fmt: skip
        except BaseException:
            self.abort()
            raise

    @property
    def attrs(self):
        """The file's HDF5 attributes (add run information before closing)."""
        return self._file.attrs

    def append(self, jets: np.ndarray, tracks: np.ndarray) -> None:
        """Append ``jets`` ``(n,)`` (JET_DTYPE) and ``tracks`` ``(n, max_tracks)`` (TRACK_DTYPE)."""
        if jets.dtype != schema.JET_DTYPE or tracks.dtype != schema.TRACK_DTYPE:
            raise TypeError("jets/tracks must have schema.JET_DTYPE / schema.TRACK_DTYPE")
        if tracks.shape != (len(jets), self.max_tracks):
            raise ValueError(f"tracks shape {tracks.shape} != ({len(jets)}, {self.max_tracks})")
        n = len(jets)
        if n == 0:
            return
        self._jets.resize((self.n + n,))
        self._tracks.resize((self.n + n, self.max_tracks))
        self._jets[self.n :] = jets
        self._tracks[self.n :] = tracks
        self.n += n

    def close(self) -> Path:
        """Mark the file complete and give it its final name; returns the final path."""
        try:
            self._file.attrs["complete"] = True
            self._file.attrs["n_jets"] = self.n
            self._file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file (a Ctrl-C meanwhile is delivered afterwards)."""
        with signals_deferred():
            try:
                if self._file is not None:
                    self._file.close()
            finally:
                self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _attr(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def _check_fields(name: str, actual: np.dtype, expected: np.dtype) -> list[str]:
    problems = []
    have = actual.fields or {}
    for field, (dt, _) in expected.fields.items():
        if field not in have:
            if field not in schema.OPTIONAL_FIELDS:
                problems.append(f"{name}: missing field {field!r} (expected {dt})")
        elif have[field][0] != dt:
            problems.append(f"{name}: field {field!r} has dtype {have[field][0]}, expected {dt}")
    return problems


def check_layout(f: h5py.File, *, require_complete: bool = True) -> None:
    """Raise :class:`SchemaError` listing every missing or mistyped dataset, field or attribute.

    Extra fields and attributes are allowed (the schema may grow).
    """
    problems = []
    name = getattr(f, "filename", "file")
    for ds, dtype in (("jets", schema.JET_DTYPE), ("tracks", schema.TRACK_DTYPE)):
        if ds not in f:
            problems.append(f"missing dataset {ds!r}")
            continue
        problems += _check_fields(ds, f[ds].dtype, dtype)
    if "jets" in f and "tracks" in f:
        nj, st = f["jets"].shape, f["tracks"].shape
        if len(nj) != 1 or len(st) != 2 or st[0] != nj[0]:
            problems.append(f"shapes jets {nj} / tracks {st} are not (N,) / (N, max_tracks)")
    for key in schema.REQUIRED_ATTRS:
        if key not in f.attrs:
            problems.append(f"missing file attribute {key!r}")
    if require_complete and "complete" in f.attrs and not bool(f.attrs["complete"]):
        problems.append("file is not marked complete (interrupted write?)")
    if problems:
        raise SchemaError(f"{name} is not an ndive-models jet file:\n  " + "\n  ".join(problems))


def read_attrs(path) -> dict:
    """File attributes of a checked file; JSON-encoded values are decoded."""
    with h5py.File(path, "r") as f:
        check_layout(f)
        out = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value[:1] in "{[":
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out


def read_jets(path, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read jets ``[start, stop)`` after checking the layout.

    Returns:
        ``(jets, tracks)``: structured arrays of shape ``(n,)`` (JET_DTYPE) and
        ``(n, max_tracks)`` (TRACK_DTYPE).
    """
    with h5py.File(path, "r") as f:
        check_layout(f)
        return f["jets"][start:stop], f["tracks"][start:stop]
