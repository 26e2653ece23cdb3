"""Run logs of ``ndive train``: what ran (resolved config, package versions, git revision) and
how it went (loss and learning rate of every step).

Files in the run directory:

- ``config.yaml``: the resolved training configuration (file, flags and ``--set`` applied);
  ``ndive train --config OUT/config.yaml`` repeats the run;
- ``provenance.json``: package versions, the git revision of the source tree (``+dirty`` with
  uncommitted changes), Python, platform and the command line (also in every checkpoint,
  key ``provenance``);
- ``steps.csv``: ``epoch, step, global_step, loss, lr`` for every optimiser step, written at
  the end of each epoch together with the checkpoint (so a resumed run continues it exactly);
- ``tensorboard/``: the same per-step loss and learning rate plus the per-epoch losses, when
  TensorBoard is installed (``pip install tensorboard``).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ._files import atomic_write

#: Distributions whose versions are recorded.
DISTRIBUTIONS = ("ndive-models", "vertexfit", "torch", "numpy", "h5py", "jax", "pyyaml")
STEP_COLUMNS = ("epoch", "step", "global_step", "loss", "lr")


def git_revision(path=None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package's source),
    with ``+dirty`` if tracked files differ from it; ``None`` outside a checkout or without
    git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def provenance() -> dict:
    """Package versions, git revision, Python, platform and command line of this process."""
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"package_versions": versions, "git_revision": git_revision(),
            "python": platform.python_version(), "platform": platform.platform(),
            "argv": list(sys.argv)}


def write_run_info(out, config: dict, prov: dict) -> None:
    """``config.yaml`` and ``provenance.json`` in ``out`` (atomically)."""
    import yaml

    out = Path(out)
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(out / "config.yaml", lambda f: f.write_text(text))
    info = json.dumps(prov, indent=1)
    atomic_write(out / "provenance.json", lambda f: f.write_text(info))


def _summary_writer(logdir):
    """A TensorBoard ``SummaryWriter``, or ``None`` when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(logdir))


class StepLog:
    """``steps.csv`` (and TensorBoard) of a run in ``out``.

    Args:
        out: run directory.
        resume_epoch: the last epoch of the checkpoint a resumed run starts from (0 for a
            new run): rows of later epochs (written after that checkpoint) are dropped.
    """

    def __init__(self, out, resume_epoch: int = 0):
        self.path = Path(out) / "steps.csv"
        self.rows: list[list] = []
        if resume_epoch > 0 and self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.reader(f)
                next(reader, None)
                self.rows = [r for r in reader if r and int(r[0]) <= resume_epoch]
        self.writer = _summary_writer(Path(out) / "tensorboard")

    def epoch(self, epoch: int, losses: list[float], lr, summary: dict) -> None:
        """Record the step ``losses`` of ``epoch`` (learning rate ``lr``: one value, or one
        per step) and its ``summary`` (``train_loss``, ``val`` loss); rewrites
        ``steps.csv`` atomically."""
        start = len(self.rows)
        lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(losses)
        for step, (loss, rate) in enumerate(zip(losses, lrs, strict=True)):
            self.rows.append([epoch, step, start + step, repr(float(loss)), repr(float(rate))])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(STEP_COLUMNS)
        w.writerows(self.rows)
        text = buf.getvalue()
        atomic_write(self.path, lambda f: f.write_text(text))
        if self.writer is not None:
            for step, (loss, rate) in enumerate(zip(losses, lrs, strict=True)):
                self.writer.add_scalar("loss/step", float(loss), start + step)
                self.writer.add_scalar("lr", float(rate), start + step)
            self.writer.add_scalar("loss/train_epoch", summary["train_loss"], epoch)
            self.writer.add_scalar("loss/val_epoch", summary["val"], epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
