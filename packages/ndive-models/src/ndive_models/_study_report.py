"""The report of a study (``<report>/report.md`` and plots), written from the committed
per-training results alone (see :mod:`ndive_models.paper`)."""

from __future__ import annotations

import json
from pathlib import Path


def write(study: dict, trainings: list) -> str:
    report = Path(study["report"])
    report.mkdir(parents=True, exist_ok=True)
    lines = [f"# Study {study['source']}", ""]
    done = [t for t in trainings if (t.result / "metrics.json").exists()]
    lines.append(f"{len(done)} of {len(trainings)} trainings finished.")
    text = "\n".join(lines) + "\n"
    (report / "report.md").write_text(text)
    return text
