"""Reading and atomically writing jet files in the layout of :mod:`ndive_models.data.schema`."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no lock (two writers of one file are then not detected)
    fcntl = None

from .._files import partial_path
from .._signals import signals_deferred
from . import schema
from ._atlas import add_atlas_fields


class SchemaError(ValueError):
    """A file does not have the layout of :mod:`ndive_models.data.schema`."""


class FileBusyError(OSError):
    """Another process is writing the same output file (its ``.partial`` file is locked)."""


class JetWriter:
    """Append jets and tracks to a new file, which gets its final name only on success.

    :meth:`append` fills the ATLAS-named fields (:func:`add_atlas_fields`) from the native
    ones, so they always agree. The data go to ``<path>.partial``; :meth:`close` writes
    ``complete = True`` and renames it with :func:`os.replace` (atomic on one file system), so
    an interrupted run never leaves a file that looks complete. The writer holds an exclusive
    lock on the ``.partial`` file from before it writes anything until after the rename: a
    second writer of the same ``path`` fails at once with :class:`FileBusyError` and touches
    nothing, while a stale ``.partial`` from a killed run (whose lock the system released) is
    overwritten.
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
        self._lock = None
        try:  # an interruption (Ctrl-C, SIGTERM) while setting up leaves no file either
            # creating and locking the file is one step for a signal (delivered after it,
            # here, so abort() deletes the file); a FileBusyError leaves _lock None: the
            # file is another process's and abort() does not touch it
            with signals_deferred():
                self._lock = _lock_partial(self.tmp)
            # HDF5's own lock is off: it would be a second lock on the file we hold locked
            self._file = h5py.File(self.tmp, "w", track_order=True, locking=False)
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
        self._unlock()
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file (a Ctrl-C meanwhile is delivered afterwards).

        Only a file this writer holds locked is deleted, never another process's."""
        with signals_deferred():
            try:
                if self._file is not None:
                    self._file.close()
            finally:
                if self._lock is not None:
                    self.tmp.unlink(missing_ok=True)
                self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _lock_partial(tmp: Path) -> int:
    """Create or open ``tmp`` and take an exclusive lock on it; returns the descriptor.

    Raises :class:`FileBusyError` if another process holds the lock. A holder may rename or
    delete the file between our open and our lock: then the lock is on a file that no
    longer has the name ``tmp`` and we try again.
    """
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileBusyError(
                f"{tmp}: another process is writing this file (the same output name); "
                "wait for it to finish or choose another name"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


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
            if field not in schema.OPTIONAL_FIELDS and field not in schema.OPTIONAL_FROM:
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

    Fields added later get their "not available" value
    (:data:`~ndive_models.data.schema.OPTIONAL_FIELDS`) or the field they stand for in older
    files (:data:`~ndive_models.data.schema.OPTIONAL_FROM`: the tracks' reference point).

    Raises:
        SchemaError: if the current layout has another native field that 1.x files lack (it
            cannot be derived: regenerate the file).
    """
    derived = {f.name for f in schema.ATLAS_JET_FIELDS + schema.ATLAS_TRACK_FIELDS}
    derived |= set(schema.COV_FIELDS)
    out = []
    for old, dtype in ((jets, schema.JET_DTYPE), (tracks, schema.TRACK_DTYPE)):
        absent = [n for n in dtype.names if n not in old.dtype.names and n not in derived]
        optional = schema.OPTIONAL_FIELDS.keys() | schema.OPTIONAL_FROM.keys()
        if missing := [n for n in absent if n not in optional]:
            raise SchemaError(f"schema 1 files lack the fields {missing}: regenerate the file "
                              "with `ndive generate`")
        new = np.zeros(old.shape, dtype)
        for n in old.dtype.names:
            if n in dtype.names:
                new[n] = old[n]
        for n in absent:  # later additions: "not available", or what older files meant
            new[n] = old[schema.OPTIONAL_FROM[n]] if n in schema.OPTIONAL_FROM else (
                schema.OPTIONAL_FIELDS[n])
        out.append(new)
    schema.set_track_cov(out[1], tracks["cov"])
    add_atlas_fields(*out)
    return out[0], out[1]


@contextlib.contextmanager
def _open(path):
    """``h5py.File(path, "r")`` whose failures name the file in one line.

    A missing file raises FileNotFoundError; an unreadable one (not HDF5, truncated,
    corrupted bytes, the ``.partial`` of an interrupted run) and a read error inside it raise
    :class:`SchemaError`.
    """
    path = Path(path)
    hint = (" (the partial file of an interrupted or running write: it is refused)"
            if path.name.endswith(".partial") else "")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as err:
        raise SchemaError(f"{path}: not a readable HDF5 file{hint} ({_first_line(err)})") from err
    try:
        with f:
            yield f
    except (OSError, RuntimeError, KeyError) as err:
        raise SchemaError(f"{path}: corrupted or truncated file{hint} "
                          f"({_first_line(err)})") from err


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_values(jets: np.ndarray, tracks: np.ndarray, path="file", start: int = 0) -> None:
    """Raise :class:`SchemaError` at the first invalid value of ``(jets, tracks)`` (read from
    ``path`` starting at jet ``start``), naming the field and the jet index in the file.

    Checked: the jet kinematics and primary vertex are finite; every valid track has finite
    parameters, theta in (0, pi), a finite covariance with a positive diagonal that is
    positive definite (Cholesky). Padding slots are not looked at.
    """
    for name in ("pt", "eta", "phi", "pv_x", "pv_y", "pv_z"):
        _first_bad(~np.isfinite(jets[name]), path, start, f"jets field {name!r} is NaN or inf")
    valid = tracks["valid"]
    for name in schema.TRACK_PARAMS:
        _first_bad(valid & ~np.isfinite(tracks[name]), path, start,
                   f"tracks field {name!r} is NaN or inf")
    theta = tracks["theta"]
    _first_bad(valid & ~((theta > 0) & (theta < np.pi)), path, start,
               "tracks field 'theta' is outside (0, pi)")
    cov = schema.track_cov(tracks)  # (the cov_* fields)
    _first_bad(valid & ~np.isfinite(cov).all(axis=(-2, -1)), path, start,
               "tracks fields 'cov_*' hold NaN or inf")
    for k, name in enumerate(schema.TRACK_PARAMS):
        _first_bad(valid & ~(cov[..., k, k] > 0), path, start,
                   f"tracks field 'cov_{name}_{name}' (a variance) is not positive")
    # positive definite: in chunks of jets, so the float64 copies stay small
    step = 16384
    for lo in range(0, len(tracks), step):
        v = valid[lo:lo + step]
        jet_idx, slot = np.nonzero(v)
        if not len(jet_idx):
            continue
        c = cov[lo:lo + step][jet_idx, slot].astype(np.float64)
        s = np.sqrt(np.diagonal(c, axis1=-2, axis2=-1))
        c = (c + np.swapaxes(c, -1, -2)) / (2 * s[:, :, None] * s[:, None, :])
        bad = np.zeros(v.shape, bool)
        bad[jet_idx, slot] = ~(np.linalg.eigvalsh(c)[:, 0] > 0)
        _first_bad(bad, path, start + lo, "tracks fields 'cov_*' are not a positive definite covariance")


def _first_bad(bad: np.ndarray, path, start: int, problem: str) -> None:
    """Raise naming the first jet (and track) where ``bad`` (jets, or jets x tracks) is set."""
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = f"jet {start + int(idx[0])}" + (f", track {int(idx[1])}" if len(idx) > 1 else "")
        n = int(bad.reshape(len(bad), -1).any(axis=1).sum())
        raise SchemaError(f"{path}: {problem} (first at {where}; {n} jets affected)")


def read_attrs(path) -> dict:
    """File attributes of a checked file; JSON-encoded values are decoded."""
    with _open(path) as f:
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
    """Read jets ``[start, stop)`` after checking the layout and the values
    (:func:`check_values`).

    Files of schema 1.x are converted in memory (:func:`upgrade_arrays`); ``ndive convert``
    rewrites them once, for tools that read the file directly (ftag, salt, puma).

    Returns:
        ``(jets, tracks)``: structured arrays of shape ``(n,)`` (JET_DTYPE) and
        ``(n, max_tracks)`` (TRACK_DTYPE).

    Raises:
        FileNotFoundError: no such file.
        SchemaError: not a readable jet file (wrong layout, corrupted, truncated, an
            unfinished ``.partial``) or an invalid value; the message names the file, the
            field and the jet index in the file.
    """
    with _open(path) as f:
        check_layout(f)
        jets, tracks = f["jets"][start:stop], f["tracks"][start:stop]
        if schema_major(f) == 1:
            jets, tracks = upgrade_arrays(jets, tracks)
    check_values(jets, tracks, path, int(start))
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
    with _open(src) as f:
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
