"""``ndive evaluate --puma``: ROC curves and score distributions drawn by puma (ATLAS plot
style without the ATLAS label, statistical uncertainty bands) from the predictions files, read
with puma's own loader.

Needs ``pip install 'ndive-models[ftag]'`` (puma-hep, atlas-ftag-tools).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

INSTALL_HINT = "--puma needs puma-hep: pip install 'ndive-models[ftag]'"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("puma") is not None


def puma_plots(files: dict[str, Path], out, *, f_c: float, reference: str | None,
               display: dict[str, str], sample: str = "ttbar") -> list[Path]:
    """Draw puma's ROC (light and c rejection vs b efficiency, ratio to ``reference``) and
    b-tagging discriminant plots for the taggers ``{name: predictions file}``.

    ``out`` is replaced (puma keeps its curves there as YAML and would reuse stale ones).

    Returns:
        The PNG files written under ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from puma.hlplots import Results, Tagger

    out = Path(out)
    # puma caches curves as YAML next to the plots and reuses them: start afresh, so that a
    # new evaluation into the same directory never draws the old curves
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results = Results(signal="bjets", sample=sample, category="single-btag",
                      atlas_first_tag="Simulation", output_dir=out, extension="png",
                      atlas_second_tag=f"$\\sqrt{{s}}$ = 14 TeV, $t\\bar{{t}}$ (ndive-models), "
                                       f"$f_c$ = {f_c:g}")
    if reference not in files:
        reference = next(iter(files))
    for name, path in files.items():
        tagger = Tagger(name, label=display.get(name, name), reference=name == reference,
                        fxs={"fc": f_c, "fu": 1.0 - f_c}, aux_tasks=[],
                        output_flavours=["bjets", "cjets", "ujets"])
        results.load_taggers_from_file([tagger], path)
    # ATLAS plot style, but no "ATLAS" label: these are not ATLAS results
    results.plot_rocs(x_range=(0.5, 1.0), atlas_brand=None)
    # one binning for all taggers (puma requires it), over the bulk of every discriminant
    discs = [t.discriminant(results.signal) for t in results.taggers.values()]
    lo = min(float(np.quantile(d, 0.001)) for d in discs)
    hi = max(float(np.quantile(d, 0.999)) for d in discs)
    results.plot_discs(wp_vlines=[70, 77], bins=np.linspace(lo, hi, 41), atlas_brand=None)
    return sorted(out.rglob("*.png"))
