"""Configuration files shipped with ndive-models (package data, so an installed ``ndive``
finds them).

- ``baseline.yaml``, ``ndive.yaml``, ``ftag_ndive.yaml``: training configs
  (:class:`~ndive_models.train.TrainConfig` keys with a ``model`` table of
  :class:`~ndive_models.models.ModelConfig` keys) with the paper's settings, for
  ``ndive train --config NAME``;
- ``dips.yaml``, ``gn2.yaml``, ``gn3.yaml``, ``gn2_regression.yaml``, ``gn2_ndive.yaml``,
  ``gn3_ndive.yaml``: the FTAG family (``docs/models.md``);
- ``paper/*.yaml``: studies for ``ndive paper --study paper/NAME`` (data sizes and seeds,
  the runs, training settings; see :mod:`ndive_models.paper`);
- ``studies/*.yaml``: other studies in the same format (``studies/family_cpu``: DIPS,
  GN2-small, GN3-small, each with and without NDIVE).

Wherever a config file is asked for, a path to an existing file or the name of a shipped
config (``ftag_ndive``, ``paper/default``; the ``.yaml`` may be left off) is accepted.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DIRECTORY", "available", "find", "set_key"]

#: The directory of the shipped config files.
DIRECTORY = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped configs, e.g. ``["baseline", ..., "paper/default", ...]``."""
    return sorted(p.relative_to(DIRECTORY).with_suffix("").as_posix()
                  for p in DIRECTORY.rglob("*.yaml"))


def set_key(d: dict, key: str, value) -> None:
    """Set the dotted ``key`` (``"model.dim"``) of the nested dict ``d`` to ``value``,
    creating the tables on the way (the ``--set key=value`` of every command)."""
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def find(name) -> Path:
    """The file ``name`` names: an existing path, else a shipped config of that name.

    Raises:
        FileNotFoundError: neither exists (the message lists the shipped configs).
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = DIRECTORY / path
    for candidate in (shipped, shipped.with_name(shipped.name + ".yaml")):
        if candidate.is_file() and DIRECTORY in candidate.resolve().parents:
            return candidate
    raise FileNotFoundError(f"config {str(name)!r}: no such file, and no shipped config of "
                            f"that name (shipped: {', '.join(available())})")
