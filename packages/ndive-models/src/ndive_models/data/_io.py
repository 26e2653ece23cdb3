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
from ._atlas import add_atlas_fields


class SchemaError(ValueError):
    """A file does not have the layout of :mod:`ndive_models.data.schema`."""


class JetWriter:
    """Append jets and tracks to a new file, which gets its final name only on success.

    :meth:`append` fills the ATLAS-named fields (:func:`add_atlas_fields`) from the native
    ones, so they always agree. The data go to ``<path>.partial``; :meth:`close` writes
    ``complete = True`` and renames it with :func:`os.replace` (atomic on one file system), so
    an interrupted run never leaves a file that looks complete. A stale ``.partial`` from a killed run is overwritten.
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
            # salt and UPP read the class names of ``flavour_label`` here
            self._jets.attrs["flavour_label"] = list(schema.FLAVOURS)
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
        """Append ``jets`` ``(n,)`` (JET_DTYPE) and ``tracks`` ``(n, max_tracks)`` (TRACK_DTYPE).

        Their ATLAS-named fields are filled in place first (whatever they held is replaced).
        """
        if jets.dtype != schema.JET_DTYPE or tracks.dtype != schema.TRACK_DTYPE:
            raise TypeError("jets/tracks must have schema.JET_DTYPE / schema.TRACK_DTYPE")
        if tracks.shape != (len(jets), self.max_tracks):
            raise ValueError(f"tracks shape {tracks.shape} != ({len(jets)}, {self.max_tracks})")
        n = len(jets)
        if n == 0:
            return
        add_atlas_fields(jets, tracks)
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


#: The layout of schema 1.x files (a (5, 5) ``cov`` sub-array, no ATLAS-named fields), frozen:
#: :func:`read_jets` converts them in memory and ``ndive convert`` rewrites them.
_V1_JET_DTYPE = np.dtype([
    ("pt", "<f4"), ("eta", "<f4"), ("phi", "<f4"), ("mass", "<f4"),
    ("HadronConeExclTruthLabelID", "<i4"), ("flavour_label", "<i4"), ("n_tracks", "<i4"),
    ("n_tracks_all", "<i4"), ("eventNumber", "<i8"), ("hf_vertex_x", "<f4"),
    ("hf_vertex_y", "<f4"), ("hf_vertex_z", "<f4"), ("Lxy", "<f4"), ("L3D", "<f4"),
    ("hadron_pt", "<f4"), ("hadron_pdgid", "<i4"), ("pv_x", "<f4"), ("pv_y", "<f4"),
    ("pv_z", "<f4"),
])  # fmt: skip
_V1_TRACK_DTYPE = np.dtype([
    ("valid", "|b1"), ("d0", "<f4"), ("z0", "<f4"), ("phi", "<f4"), ("theta", "<f4"),
    ("rho", "<f4"), ("cov", "<f4", (5, 5)), ("true_d0", "<f4"), ("true_z0", "<f4"),
    ("true_phi", "<f4"), ("true_theta", "<f4"), ("true_rho", "<f4"), ("charge", "|i1"),
    ("pt", "<f4"), ("eta", "<f4"), ("deta", "<f4"), ("dphi", "<f4"),
    ("d0_significance", "<f4"), ("z0_significance", "<f4"), ("ftagTruthOriginLabel", "|i1"),
    ("ftagTruthVertexIndex", "<i4"), ("truth_vertex_x", "<f4"), ("truth_vertex_y", "<f4"),
    ("truth_vertex_z", "<f4"),
])  # fmt: skip
_CURRENT_MAJOR = int(schema.SCHEMA_VERSION.split(".")[0])


def schema_major(f: h5py.File) -> int:
    """Major schema version of an open file (the current one if the attribute is missing)."""
    version = f.attrs.get("schema_version", schema.SCHEMA_VERSION)
    if isinstance(version, bytes):
        version = version.decode()
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise SchemaError(f"{f.filename}: unreadable schema_version {version!r}") from None


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

    Extra fields and attributes are allowed (the schema may grow). Files of schema 1.x are
    checked against their own layout (:func:`read_jets` converts them).
    """
    problems = []
    name = getattr(f, "filename", "file")
    major = schema_major(f)
    if major > _CURRENT_MAJOR:
        raise SchemaError(
            f"{name} has schema {f.attrs['schema_version']}, newer than this ndive-models "
            f"reads ({schema.SCHEMA_VERSION}): update ndive-models"
        )
    if major == 1:
        expected = (("jets", _V1_JET_DTYPE), ("tracks", _V1_TRACK_DTYPE))
    else:
        expected = (("jets", schema.JET_DTYPE), ("tracks", schema.TRACK_DTYPE))
    for ds, dtype in expected:
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


def upgrade_arrays(jets: np.ndarray, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Schema 1.x ``jets`` ``(n,)`` and ``tracks`` ``(n, T)`` -> the current layout.

    The (5, 5) ``cov`` becomes the ``cov_*`` scalars and the ATLAS-named fields are derived.

    Fields added later (:data:`~ndive_models.data.schema.OPTIONAL_FIELDS`) get their
    "not available" value.

    Raises:
        SchemaError: if the current layout has another native field that 1.x files lack (it
            cannot be derived: regenerate the file).
    """
    derived = {f.name for f in schema.ATLAS_JET_FIELDS + schema.ATLAS_TRACK_FIELDS}
    derived |= set(schema.COV_FIELDS)
    out = []
    for old, dtype in ((jets, schema.JET_DTYPE), (tracks, schema.TRACK_DTYPE)):
        absent = [n for n in dtype.names if n not in old.dtype.names and n not in derived]
        if missing := [n for n in absent if n not in schema.OPTIONAL_FIELDS]:
            raise SchemaError(f"schema 1 files lack the fields {missing}: regenerate the file "
                              "with `ndive generate`")
        new = np.zeros(old.shape, dtype)
        for n in absent:  # later additions: "not available"
            new[n] = schema.OPTIONAL_FIELDS[n]
        for n in old.dtype.names:
            if n in dtype.names:
                new[n] = old[n]
        out.append(new)
    schema.set_track_cov(out[1], tracks["cov"])
    add_atlas_fields(*out)
    return out[0], out[1]


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

    Files of schema 1.x are converted in memory (:func:`upgrade_arrays`); ``ndive convert``
    rewrites them once, for tools that read the file directly (ftag, salt, puma).

    Returns:
        ``(jets, tracks)``: structured arrays of shape ``(n,)`` (JET_DTYPE) and
        ``(n, max_tracks)`` (TRACK_DTYPE).
    """
    with h5py.File(path, "r") as f:
        check_layout(f)
        jets, tracks = f["jets"][start:stop], f["tracks"][start:stop]
        if schema_major(f) == 1:
            return upgrade_arrays(jets, tracks)
        return jets, tracks


#: File attributes :func:`convert` does not copy (the writer sets them anew).
_WRITER_ATTRS = ("schema_version", "complete", "n_jets", "max_tracks", "units", "d0_sign",
                 "rho_definition", "reference_point", "significance_sign", "flavours",
                 "origin_labels")


def convert(src, dst, *, chunk_jets: int = 20_000, progress: bool = True) -> Path:
    """Rewrite a schema 1.x file ``src`` in the current layout as ``dst`` (may be ``src``).

    Written atomically (``dst`` appears, or is replaced, only when complete). The other file
    attributes (seed, generator settings, versions, ...) are kept; ``converted_from`` records
    the source.

    Raises:
        SchemaError: ``src`` is not a jet file, or is already in the current layout.
    """
    from tqdm.auto import tqdm

    src, dst = Path(src), Path(dst)
    with h5py.File(src, "r") as f:
        check_layout(f)
        if schema_major(f) == _CURRENT_MAJOR:
            raise SchemaError(f"{src} is already schema {f.attrs['schema_version']}: "
                              "nothing to convert")
        attrs = {k: v for k, v in f.attrs.items() if k not in _WRITER_ATTRS}
        attrs["converted_from"] = f"{src.name} (schema {f.attrs['schema_version']})"
        n, max_tracks = f["jets"].shape[0], f["tracks"].shape[1]
        with JetWriter(dst, max_tracks, attrs) as w, tqdm(
            total=n, unit="jets", disable=not progress, desc="convert"
        ) as bar:
            for lo in range(0, n, chunk_jets):
                jets, tracks = upgrade_arrays(f["jets"][lo : lo + chunk_jets],
                                              f["tracks"][lo : lo + chunk_jets])
                w.append(jets, tracks)
                bar.update(len(jets))
    return dst
