"""The report of a study (``<report>/report.md`` and its plots), written from the committed
per-training results alone (``<report>/<condition>/<name>/metrics.json``, ``history.json``,
``cpu.json``; see :mod:`ndive_models.paper`), whatever subset of the trainings has finished.

Uncertainties (docs/paper.md, "The study"): a model's number is the mean over its seeds;
``seed`` is the standard error of that mean from the seed-to-seed spread, ``stat`` the
spread of the seed mean over bootstrap replicates of the test jets (the same replicates for
every training), ``total`` both in quadrature (:func:`ndive_models._metrics.ratio_uncertainty`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ._metrics import (
    projected_ratio_total,
    ratio_uncertainty,
    seed_mean_uncertainty,
    seeds_for_target,
)

#: Display names of the study's runs (the run name is shown for others).
DISPLAY = {
    "baseline": "Baseline (GN2-like)", "ftag_ndive": "FTAG+NDIVE", "ndive": "NDIVE alone",
    "ftag_ndive_truth": "FTAG+NDIVE, perfect selection (paper: HF tracks)",
    "ftag_ndive_secondary": "FTAG+NDIVE, perfect selection of displaced tracks (no label)",
    "ftag_ndive_all": "FTAG+NDIVE, all tracks in the fit",
    "ftag_ndive_fitinfo": "FTAG+NDIVE + fit chi2 and errors as inputs",
}
WPS = ("0.60", "0.70", "0.77", "0.85")
#: Target of issue 17: total 1-sigma uncertainty of the light-rejection ratio at 70%.
TARGET_SIGMA = 0.08


def _load(t) -> dict | None:
    p = t.result / "metrics.json"
    if not p.exists():
        return None
    m = json.loads(p.read_text())
    for name in ("history.json", "cpu.json"):
        q = t.result / name
        m["_" + name.split(".")[0]] = json.loads(q.read_text()) if q.exists() else None
    return m


def _display(trainings) -> None:
    """Runs whose model config has a ``label`` are shown by it."""
    for t in trainings:
        label = getattr(t.cfg.model, "label", "")
        if label:
            DISPLAY.setdefault(t.run, label)


def _models(trainings, condition) -> dict:
    """``{run: [(training, metrics), ...]}`` of the finished trainings of ``condition``."""
    out: dict[str, list] = {}
    for t in trainings:
        if t.condition != condition:
            continue
        m = _load(t)
        out.setdefault(t.run, [])
        if m is not None:
            out[t.run].append((t, m))
    return out


def _rej(ms, bkg, wp):
    vals = np.array([m["rejection"][bkg][wp]["rejection"] for _, m in ms])
    boot = np.array([m["bootstrap"][bkg][wp] for _, m in ms], np.float64)
    return vals, boot


def _num(x, nd=3) -> str:
    if x is None or not math.isfinite(x):
        return "-" if x is None or math.isnan(x) else "inf"
    return f"{x:.{nd}g}"


def _pm(u: dict, nd=3) -> str:
    s = _num(u["mean"] if "mean" in u else u["ratio"], nd)
    parts = [f"± {_num(u[k], 2)} ({k})" for k in ("seed", "stat") if math.isfinite(u[k])]
    return " ".join([s, *parts])


def _ratio_cell(r: dict) -> str:
    s = f"{r['ratio']:.3f}"
    if math.isfinite(r["total"]):
        s += f" ± {r['total']:.3f}" + (" †" if r.get("borrowed") else "")
    elif math.isfinite(r["stat"]):
        s += f" ± {r['stat']:.3f} (stat only)"
    return s


def _kinds(study) -> dict:
    """``{run name: its model config}`` of the study's runs (runs of one kind share it)."""
    return {r["name"]: r["config"] for r in study["runs"]}


def _spreads(study, tagged) -> dict:
    """``{run: (sibling, n_seeds)}`` for the one-seed runs of ``tagged``: the run of the
    same model config (the study's ``config`` of the run) with the most finished seeds,
    two or more, whose seed spread per training stands in for the one-seed run's unknown
    spread in its ratios (:func:`~ndive_models._metrics.ratio_uncertainty`)."""
    kind = _kinds(study)
    out = {}
    for run, ms in tagged.items():
        if len(ms) != 1:
            continue
        sib = max((r for r in tagged if r != run and len(tagged[r]) > 1
                   and kind.get(r) == kind.get(run)),
                  key=lambda r: len(tagged[r]), default=None)
        if sib is not None:
            out[run] = (sib, len(tagged[sib]))
    return out


def _ratio(tagged, spreads, num, den, bkg, wp) -> dict:
    """:func:`~ndive_models._metrics.ratio_uncertainty` of runs ``num`` / ``den``, a
    one-seed run taking the seed spread per training of its sibling in ``spreads``."""
    def spread(run):
        if run not in spreads:
            return None
        v, _ = _rej(tagged[spreads[run][0]], bkg, wp)
        return float(np.std(v, ddof=1) / np.mean(v))

    a, ab = _rej(tagged[num], bkg, wp)
    b, bb = _rej(tagged[den], bkg, wp)
    return ratio_uncertainty(a, b, ab, bb, num_spread=spread(num), den_spread=spread(den))


def _borrowed_note(spreads, used: set, tagged) -> list[str]:
    """The note under a ratio table for the one-seed runs in ``used`` whose seed term was
    borrowed."""
    rows = []
    for run in sorted(used & set(spreads)):
        sib, n = spreads[run]
        v, _ = _rej(tagged[sib], "light", "0.70")
        rows.append(f"{DISPLAY.get(run, run)} from {DISPLAY.get(sib, sib)} ({n} seeds: "
                    f"{np.std(v, ddof=1) / np.mean(v):.0%} per training for light at 70%)")
    if not rows:
        return []
    return [("† One seed: the seed term of this run is the spread of one training of the "
             "same model config with several seeds (an estimate; its own is unknown): "
             + "; ".join(rows) + "."), ""]


def verdict_line(bkg: str, r: dict, n_a: int, n_b: int, paper_gain: float) -> str:
    """One line of the verdict: the FTAG+NDIVE / baseline ratio ``r`` (from
    :func:`~ndive_models._metrics.ratio_uncertainty`) of ``bkg`` at 70%, with ``n_a`` and
    ``n_b`` seeds, its distance from 1 and from the paper's gain in units of its total
    uncertainty; no distance while a model has one seed (the seed spread, which is not
    known then, can be the larger term: the statistical error alone is no significance)."""
    head = (f"- {bkg}: {r['ratio']:.3f} ± {{sig}} (seed {_num(r['seed'], 2)}, "
            f"stat {_num(r['stat'], 2)}; {n_a} vs {n_b} seeds)")
    if not math.isfinite(r["total"]):
        return (head.format(sig=f"{r['stat']:.3f} (stat only)") + ": no significance yet, "
                "the seed spread needs 2 or more seeds of each model.")
    sig = r["total"]
    return (head.format(sig=f"{sig:.3f}") + f": {(r['ratio'] - 1) / sig:+.1f} sigma from 1, "
            f"{(r['ratio'] - paper_gain) / sig:+.1f} sigma from the paper's {paper_gain}"
            + (f"; the target sigma <= {TARGET_SIGMA} is "
               f"{'met' if sig <= TARGET_SIGMA else 'not met'}" if bkg == "light" else "")
            + ".")


def gain_word(z: float, who: str = "FTAG+NDIVE") -> str:
    """The verdict on a ratio ``z`` total standard deviations from 1: the gain is
    *confirmed* at 3 or more, *indicated* at 2-3, *not seen* within 2; ``who`` is *worse*
    at 2 or more below."""
    return ("the gain is **confirmed**" if z >= 3 else "a gain is **indicated**, not "
            "established" if z >= 2 else f"{who} is **worse**" if z <= -2 else
            "**no gain is seen**")


def answer_line(cond: str, light: dict | None, c: dict | None, n_a: int, n_b: int,
                planned: tuple[int, int], paper_gain: float,
                best: tuple[str, dict] | None = None, moonshot: float | None = None,
                controls: list[tuple[str, dict]] = ()) -> str:
    """The report's answer for one condition, in words: the FTAG+NDIVE / baseline
    rejection ratios at 70% (``light``, ``c`` from
    :func:`~ndive_models._metrics.ratio_uncertainty`, None before both models have a
    result), with ``n_a`` / ``n_b`` of the ``planned`` seeds. The gain is *confirmed* at 3
    sigma or more above 1 (total uncertainty), *indicated* at 2-3, *not seen* within 2, and
    FTAG+NDIVE is *worse* at 2 or more below. ``best``: the run (label, light ratio) with
    the highest light ratio among those that are no reference, measured against the
    ``moonshot`` ratio (the study's ``moonshot`` key; no moonshot sentence without both);
    ``controls``: that run's light ratios (label, ratio) to its own ``versus`` runs of the
    reference's model (e.g. a larger FTAG+NDIVE against the baseline of its size), which say
    how much of it is the fit and how much the size."""
    name = f"- **{cond or 'study'}**: "
    if light is None or c is None:
        return name + (f"no answer yet ({n_a} of {planned[0]} FTAG+NDIVE and {n_b} of "
                       f"{planned[1]} baseline trainings finished).")
    seeds = f"{n_a} vs {n_b} seeds" + ("" if (n_a, n_b) == tuple(planned)
                                       else f" of {planned[0]} vs {planned[1]} planned: "
                                       "preliminary")
    text = (f"FTAG+NDIVE rejects light jets {light['ratio']:.3f} ± {light['total']:.3f} times "
            f"as well as the baseline at 70% b-efficiency (paper {paper_gain})")
    if not math.isfinite(light["total"]):
        return name + text.replace(f" ± {light['total']:.3f}", "") + (
            f"; no significance with one seed of a model ({seeds}).")
    z = (light["ratio"] - 1) / light["total"]
    zp = (light["ratio"] - paper_gain) / light["total"]
    word = gain_word(z)
    paper_txt = ("" if abs(zp) < 2 else
                 f"; {'smaller' if zp < 0 else 'larger'} than the paper's ({zp:+.1f} sigma)")
    line = (name + text + f": {z:+.1f} sigma from 1, {word}{paper_txt}; c jets "
            f"{c['ratio']:.3f} ± {c['total']:.3f} ({seeds}).")
    if best is not None and moonshot is not None:
        def num(r):
            return f"{r['ratio']:.3f}" + (f" ± {r['total']:.3f}" if math.isfinite(r["total"])
                                          else "")
        label, r = best
        versus = "".join(f"; {num(rc)} against {lc}" for lc, rc in controls)
        line += (f" Moonshot (light ratio >= {moonshot:g}): "
                 + ("reached" if r["ratio"] >= moonshot else "not reached")
                 + f" (best: {label}, {num(r)}{versus}).")
    return line


def moonshot_runs(study: dict, tagged: dict, ref: str) -> list[str]:
    """The runs of ``tagged`` that may claim the study's ``moonshot``: no reference run
    (``reference: true``: a perfect selection is no tagger) and no variant of the
    reference's own model config (a larger baseline is no vertex-fit idea)."""
    kind = _kinds(study)
    return [r for r in tagged if r != ref
            and not any(getattr(t, "reference", False) for t, _ in tagged[r])
            and (kind.get(r) is None or kind.get(r) != kind.get(ref))]


def moonshot_goal(study: dict, tagged: dict, spreads: dict, ratios: dict, ref: str,
                  cond: str) -> tuple:
    """``(ratio, best, controls)`` for :func:`answer_line` in condition ``cond``: the study's
    ``moonshot`` ratio (None without the key, or when ``cond`` is not one of its
    ``conditions``), the best of :func:`moonshot_runs` by its light ratio at 70% to ``ref``
    (label, ratio), and that run's ratios to its ``versus`` runs of ``ref``'s model."""
    m = study.get("moonshot")
    if m is None or ("conditions" in m and cond not in m["conditions"]):
        return None, None, []
    runs = moonshot_runs(study, tagged, ref)
    if not runs:
        return m["ratio"], None, []
    run = max(runs, key=lambda r: ratios[(r, "light", "0.70")]["ratio"])
    kind = _kinds(study)
    controls = [(DISPLAY.get(v, v), _ratio(tagged, spreads, run, v, "light", "0.70"))
                for v in _versus(study, run)
                if v in tagged and kind[v] == kind.get(ref)]  # versus names study runs
    return m["ratio"], (DISPLAY.get(run, run), ratios[(run, "light", "0.70")]), controls


def projection_line(a, b, stat: float, planned: int) -> str | None:
    """Where the light ratio's total uncertainty is heading: at the relative seed spreads
    of the FTAG+NDIVE (``a``) and baseline (``b``) light rejections so far, what
    ``planned`` seeds of each give and how many the target needs (None before 2 seeds of
    each, and once both have their ``planned`` seeds: the verdict is then the number). The
    spreads of a few seeds are themselves uncertain (2 seeds: a factor ~2)."""
    if len(a) < 2 or len(b) < 2 or min(len(a), len(b)) >= planned:
        return None
    spread = [float(np.std(x, ddof=1) / np.mean(x)) for x in (a, b)]
    need = seeds_for_target(a, b, stat, TARGET_SIGMA)
    return (f"- projection (light): at the seed spreads so far ({spread[0]:.0%} FTAG+NDIVE, "
            f"{len(a)} seeds; {spread[1]:.0%} baseline, {len(b)} seeds; uncertain "
            f"themselves), {planned} seeds of each would give ± "
            f"{projected_ratio_total(a, b, stat, planned):.3f}; the target ± {TARGET_SIGMA} "
            + (f"needs {need} seeds of each." if need else "is out of reach by seeds alone "
               "(the statistical term, or more than 50 seeds)."))


def file_list(names: list[str], most: int = 4) -> str:
    """``names`` joined by commas, or, beyond ``most`` names, the first and the last with
    their count ("shard_s2001.h5 ... shard_s2096.h5: 96 files"): a report line stays
    readable with a hundred test shards."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return f"{names[0]} ... {names[-1]}: {len(names)} files"


def _param_count(t) -> int | None:
    """The trainable parameters of training ``t``'s model, from its committed ``best.pt``
    (None without one): the models differ in size, which a comparison must name."""
    p = None if t is None else t.result / "best.pt"
    if p is None or not p.exists():
        return None
    from .train import load_checkpoint

    model, _ = load_checkpoint(p)
    return sum(x.numel() for x in model.parameters() if x.requires_grad)


def _n_parameters(t) -> str:
    """:func:`_param_count` for a table cell ("-" when unknown)."""
    n = _param_count(t)
    return "-" if n is None else f"{n:,}"


def _cpu_complete(m: dict) -> bool:
    """Whether the training CPU of results ``m`` counts every epoch (``from_epoch``: the
    first counted, when a training resumed from a checkpoint without CPU records)."""
    return (m["_cpu"] or {}).get("train", {}).get("from_epoch", 1) <= 1


def _condition(study, trainings, cond, report: Path, paper: dict,
               answers: list, answer_rows: list) -> list[str]:
    """The report's section of condition ``cond``; appends its :func:`answer_line` to
    ``answers`` and the ratios behind it to ``answer_rows`` (:func:`summary_rows`)."""
    models = _models(trainings, cond)
    tag = cond or "study"
    L = [f"## Condition: {cond or '(default)'}", ""]
    note = (study.get("conditions") or {}).get(cond, {}).get("note")
    if note:
        L += [note, ""]
    # status
    L += ["| run | finished trainings | epochs run (best) | CPU h (train + eval) |",
          "|---|---|---|---|"]
    planned = {}
    for t in trainings:
        if t.condition == cond:
            planned[t.run] = planned.get(t.run, 0) + 1
    for run, ms in models.items():
        ep = ", ".join(f"{len(m['_history'] or [])} ({m['best_epoch']})" for _, m in ms)
        cpu = sum(sum(e["cpu_s"] for e in (m["_cpu"] or {}).values()) for _, m in ms)
        low = "≥ " if any(not _cpu_complete(m) for _, m in ms) else ""
        L.append(f"| {DISPLAY.get(run, run)} | {len(ms)} / {planned[run]} | {ep or '-'} | "
                 f"{low}{cpu / 3600:.2f} |")
    L.append("")
    tagged = {r: ms for r, ms in models.items() if ms and "rejection" in ms[0][1]}
    want = (planned.get("ftag_ndive", 0), planned.get("baseline", 0))
    if want[0] and want[1]:  # the study compares the two: say where the answer stands
        answers.append(answer_line(cond, None, None, len(tagged.get("ftag_ndive", [])),
                                   len(tagged.get("baseline", [])), want,
                                   paper["gain_at_70"]["light"]))
    if not tagged:
        return L + ["No finished tagger training yet.", ""]
    m0 = next(iter(tagged.values()))[0][1]
    npf = m0["n_per_flavour"]
    L += [(f"Test jets: {npf['b']} b, {npf['c']} c, {npf['light']} light "
          f"({file_list(m0['test_files'])}); f_c = {m0['f_c']}."), ""]
    # rejections
    L += ["### Rejections at fixed b-jet efficiency", "",
          ("Mean over seeds ± seed (standard error from the seed spread) ± stat (bootstrap "
          "over test jets)."), "",
          "| model | seeds | WP | light rejection | c rejection |", "|---|---|---|---|---|"]
    summary = {}
    for run, ms in tagged.items():
        for wp in WPS:
            cells = []
            for bkg in ("light", "c"):
                u = seed_mean_uncertainty(*_rej(ms, bkg, wp))
                summary[(run, bkg, wp)] = u
                cells.append(_pm(u))
            L.append(f"| {DISPLAY.get(run, run)} | {len(ms)} | {float(wp):.0%} | "
                     f"{cells[0]} | {cells[1]} |")
    L.append("")
    # ratios
    ratios = {}
    ref = study.get("reference") or "baseline"  # a run name or a model label
    ref = next((r for r in tagged if ref in (r, DISPLAY.get(r))), ref)
    if ref in tagged:
        L += [f"### Ratio to {DISPLAY.get(ref, ref)}", "",
              ("Ratio of the seed means; ± the total uncertainty (seed and test statistics "
              "in quadrature; see the end of this report)."), "",
              "| model | background | " + " | ".join(f"{float(w):.0%}" for w in WPS)
              + " | per-seed ratios at 70% |", "|---|---|" + "---|" * len(WPS) + "---|"]
        spreads = _spreads(study, tagged)
        for run in tagged:
            if run == ref:
                continue
            for bkg in ("light", "c"):
                cells = []
                for wp in WPS:
                    r = _ratio(tagged, spreads, run, ref, bkg, wp)
                    ratios[(run, bkg, wp)] = r
                    cells.append(_ratio_cell(r))
                per = ", ".join(f"{x:.2f}" for x in ratios[(run, bkg, "0.70")]["per_seed"])
                L.append(f"| {DISPLAY.get(run, run)} | {bkg} | {' | '.join(cells)} | "
                         f"{per} |")
        L.append("")
        L += _borrowed_note(spreads, set(tagged), tagged)
        pairs = _pairs(study, tagged, spreads)  # after the verdict
        if ref == "baseline" and ("ftag_ndive", "light", "0.70") in ratios:
            L += ["### Verdict (FTAG+NDIVE / baseline at 70%)", ""]
            for bkg in ("light", "c"):
                L.append(verdict_line(bkg, ratios[("ftag_ndive", bkg, "0.70")],
                                      len(tagged["ftag_ndive"]), len(tagged["baseline"]),
                                      paper["gain_at_70"][bkg]))
            a, _ = _rej(tagged["ftag_ndive"], "light", "0.70")
            b, _ = _rej(tagged["baseline"], "light", "0.70")
            line = projection_line(a, b, ratios[("ftag_ndive", "light", "0.70")]["stat"],
                                   planned.get("ftag_ndive", 0))
            L += [line] if line else []
            L.append("")
            if want[0] and want[1]:  # the answer with numbers replaces "no answer yet"
                goal, best, controls = moonshot_goal(study, tagged, spreads, ratios, ref,
                                                     cond)
                answers[-1] = answer_line(cond, ratios[("ftag_ndive", "light", "0.70")],
                                          ratios[("ftag_ndive", "c", "0.70")],
                                          len(tagged["ftag_ndive"]), len(tagged["baseline"]),
                                          want, paper["gain_at_70"]["light"], best, goal,
                                          controls)
                answers[-1] += versus_sentence(study, tagged, spreads, "ftag_ndive")
                answer_rows += summary_rows(study, tagged, spreads, cond or "study")
        L += pairs
    # beside the paper
    L += ["### Beside the paper (Fig. 7)", "",
          "| model | WP | light (here) | light (paper) | c (here) | c (paper) |",
          "|---|---|---|---|---|---|"]
    for run in ("baseline", "ftag_ndive", "ftag_ndive_truth"):
        for wp in ("0.70", "0.60"):
            p = paper.get(run, {})
            if run not in tagged or wp not in p.get("light", {}):
                continue
            L.append(f"| {DISPLAY.get(run, run)} | {float(wp):.0%} | "
                     f"{_pm(summary[(run, 'light', wp)])} | {p['light'][wp]} | "
                     f"{_pm(summary[(run, 'c', wp)])} | {p['c'][wp]} |")
    if ref == "baseline" and ("ftag_ndive", "light", "0.70") in ratios:
        for wp in ("0.70", "0.60"):
            # the paper quotes the 70% gains; at 60% the ratio of its read-off rejections
            g = paper["gain_at_70"] if wp == "0.70" else {
                bkg: paper["ftag_ndive"][bkg][wp] / paper["baseline"][bkg][wp]
                for bkg in ("light", "c")}
            pl, pc = g["light"], g["c"]
            L.append(f"| FTAG+NDIVE / baseline | {float(wp):.0%} | "
                     f"{_ratio_cell(ratios[('ftag_ndive', 'light', wp)])} | {pl:.2f} | "
                     f"{_ratio_cell(ratios[('ftag_ndive', 'c', wp)])} | {pc:.2f} |")
    L.append("")
    # track selection and vertex
    fitted = {r: ms for r, ms in models.items() if ms and "vertex" in ms[0][1]}
    if fitted:
        pe = paper["track_selection_efficiency"]
        L += ["### NDIVE track selection and the fit", "",
              ("Selection: weight > 0.5 x the jet's largest weight, against the tracks from "
              f"the b/c decay chain (paper: efficiency {pe['b']} b, {pe['c']} c). Mean over "
              "seeds."), "",
              "| model | eff. b | purity b | eff. c | purity c | fit usable b / c / light |",
              "|---|---|---|---|---|---|"]
        for run, ms in fitted.items():
            ts = [m["track_selection"] for _, m in ms]
            f = lambda fl, q, ts=ts: np.mean([x[fl][q] for x in ts])
            ok = [np.mean([m["fit_ok_fraction"][fl] for _, m in ms])
                  for fl in ("b", "c", "light")]
            L.append(f"| {DISPLAY.get(run, run)} | {f('b', 'efficiency'):.3f} | "
                     f"{f('b', 'purity'):.3f} | {f('c', 'efficiency'):.3f} | "
                     f"{f('c', 'purity'):.3f} | {' / '.join(f'{x:.3f}' for x in ok)} |")
        L += ["", ("Vertex residuals (fitted - true heavy-flavour decay vertex, b- and c-jets "
              "with a usable fit; first seed): half the 16-84% interval."), "",
              "| model | jets | sigma68 x, y, z [mm] | pull sigma68 x, y, z |",
              "|---|---|---|---|"]
        for run, ms in fitted.items():
            v = ms[0][1]["vertex"]
            if v.get("residual") is None:
                continue
            L.append(f"| {DISPLAY.get(run, run)} | {v['n_jets_used']} | "
                     f"{', '.join(f'{x:.3f}' for x in v['residual']['sigma68'])} | "
                     f"{', '.join(f'{x:.2f}' for x in v['pull']['sigma68'])} |")
        L.append("")
    # cost
    L += ["### Cost", "", ("| model | parameters | trainings | CPU h per training (train) | "
          "CPU h per training (evaluation) | epochs | jets/s (training, median) |"),
          "|---|---|---|---|---|---|---|"]
    uncounted = []
    for run, ms in models.items():
        if not ms:
            continue
        # the mean training cost of the trainings whose every epoch was counted
        tr = [(m["_cpu"] or {}).get("train", {}).get("cpu_s", 0.0) for _, m in ms
              if _cpu_complete(m)]
        ev = [(m["_cpu"] or {}).get("evaluate", {}).get("cpu_s", 0.0) for _, m in ms]
        ep = [len(m["_history"] or []) for _, m in ms]
        jps = [e["jets_per_s"] for _, m in ms for e in (m["_history"] or [])
               if "jets_per_s" in e]
        partial = [f"{t.name} (from epoch {m['_cpu']['train']['from_epoch']})"
                   for t, m in ms if not _cpu_complete(m)]
        uncounted += partial
        tr_txt = f"{np.mean(tr) / 3600:.2f}" if tr else "-"
        if partial:
            tr_txt += f" ({len(tr)} of {len(ms)})"
        L.append(f"| {DISPLAY.get(run, run)} | {_n_parameters(ms[0][0])} | {len(ms)} | "
                 f"{tr_txt} | "
                 f"{np.mean(ev) / 3600:.3f} | {np.mean(ep):.1f} | "
                 f"{np.median(jps) if jps else 0:.0f} |")
    L.append("")
    if uncounted:
        L += [("Training CPU counted only from a later epoch (the earlier epochs ran before "
               "CPU records; left out of the means): " + ", ".join(uncounted) + "."), ""]
    # plots
    plots = _plots(models, tagged, fitted, report, tag, DISPLAY.get(ref, ref))
    L += ["### Plots", ""] + [f"![{name}]({name})" + "\n" for name in plots]
    return L


def _pairs(study, tagged, spreads) -> list[str]:
    """The table of the runs' own comparisons (a run's ``versus: <run>`` in the study, e.g.
    the dim-64 FTAG+NDIVE against the dim-64 baseline), where both have finished."""
    pairs = [(r["name"], v) for r in study["runs"] for v in r.get("versus", [])
             if r["name"] in tagged and v in tagged]
    if not pairs:
        return []
    L = ["### Other comparisons", "",
         ("Ratio of the seed means of a run to the run it is compared with (`versus` in the "
          "study), ± as above."), "",
         "| model / compared with | background | " + " | ".join(
             f"{float(w):.0%}" for w in WPS) + " | per-seed ratios at 70% |",
         "|---|---|" + "---|" * len(WPS) + "---|"]
    for num, den in pairs:
        for bkg in ("light", "c"):
            rs = [_ratio(tagged, spreads, num, den, bkg, wp) for wp in WPS]
            per = ", ".join(f"{x:.2f}" for x in rs[WPS.index("0.70")]["per_seed"])
            L.append(f"| {DISPLAY.get(num, num)} / {DISPLAY.get(den, den)} | {bkg} | "
                     f"{' | '.join(_ratio_cell(r) for r in rs)} | {per} |")
    L.append("")
    return L + _borrowed_note(spreads, {x for p in pairs for x in p}, tagged)


def _versus(study, run: str) -> list[str]:
    """The runs ``run`` is compared with (its ``versus`` list in the study; [] without)."""
    return next((r.get("versus", []) for r in study["runs"] if r["name"] == run), [])


def summary_rows(study, tagged, spreads, cond: str) -> list[tuple]:
    """The ratios of the answer, for :func:`ndive_models._plots.ratio_summary`:
    ``(cond, comparison, background, ratio, total)`` at 70% for FTAG+NDIVE / baseline,
    FTAG+NDIVE / each of its ``versus`` runs, and each of those / baseline (what size
    alone gives)."""
    versus = [v for v in _versus(study, "ftag_ndive") if v in tagged]
    pairs = ([("ftag_ndive", "baseline")] + [("ftag_ndive", v) for v in versus]
             + [(v, "baseline") for v in versus])
    rows = []
    for num, den in pairs:
        for bkg in ("light", "c"):
            r = _ratio(tagged, spreads, num, den, bkg, "0.70")
            rows.append((cond, f"{DISPLAY.get(num, num)} / {DISPLAY.get(den, den)}", bkg,
                         r["ratio"], r["total"]))
    return rows


EQUAL_SIZE = 0.05
"""Two models within this relative difference of trainable parameters are of equal size:
their ratio isolates what one has that the other lacks (here the vertex fit)."""


def versus_sentence(study, tagged, spreads, run: str,
                    params: dict[str, int | None] | None = None) -> str:
    """For the answer: ``run``'s light and c ratios at 70% to each of its ``versus`` runs
    that has a result (e.g. FTAG+NDIVE against baselines of its size and larger); "" for
    none. ``params``: trainable parameters per run (default: from each run's first
    ``best.pt``); against a run of equal size (:data:`EQUAL_SIZE`) the sentence gives the
    verdict on the light ratio (:func:`gain_word`), which is then the vertex fit's own."""
    def one(r):
        if not math.isfinite(r["total"]):
            return f"{r['ratio']:.3f} ± {r['stat']:.3f} (stat only)"
        return (f"{r['ratio']:.3f} ± {r['total']:.3f}" + (" †" if r["borrowed"] else "")
                + f", {(r['ratio'] - 1) / r['total']:+.1f} sigma from 1")

    def size(name):
        if params is not None:
            return params.get(name)
        return _param_count(tagged[name][0][0])

    out = ""
    dens = [den for den in _versus(study, run) if den in tagged and run in tagged]
    n_a = size(run) if dens else None
    for den in dens:
        n_b = size(den)
        equal = bool(n_a and n_b) and abs(n_a - n_b) <= EQUAL_SIZE * n_b
        lead = (f" At equal size ({n_a:,} vs {n_b:,} parameters), against "
                if equal else " Against ")
        light, c = (_ratio(tagged, spreads, run, den, bkg, "0.70") for bkg in ("light", "c"))
        out += (f"{lead}{DISPLAY.get(den, den)} instead: light ratio {one(light)}; "
                f"c {one(c)} ({len(tagged[run])} vs {len(tagged[den])} seeds)")
        if equal and math.isfinite(light["total"]):
            out += (": for the vertex fit itself, "
                    + gain_word((light["ratio"] - 1) / light["total"], DISPLAY.get(run, run)))
        out += "."
    return out


def _plots(models, tagged, fitted, report: Path, tag: str, reference: str) -> list[str]:
    from . import _plots as P

    plt = P._plt()
    names = []
    effs = next(iter(tagged.values()))[0][1]["roc"]["effs"]
    for bkg in ("light", "c"):
        curves = {DISPLAY.get(r, r): np.array([np.interp(effs, m["roc"]["effs"],
                                                         m["roc"][bkg]) for _, m in ms])
                  for r, ms in tagged.items()}
        n_bkg = {DISPLAY.get(r, r): ms[0][1]["n_per_flavour"][bkg] for r, ms in tagged.items()}
        name = f"roc_{tag}_{bkg}.png"
        P.roc(effs, curves, reference, bkg, report / name, n_bkg=n_bkg)
        names.append(name)
    # the flavour loss is the study's yardstick (monitor: flavour) and the same quantity
    # for every model; the totals differ between models; the NDIVE vertex term is in mm
    panels = [("flavour", "validation flavour loss (monitored)"),
              ("loss", "validation loss (each model's own total)"),
              ("ndive", "validation NDIVE vertex term")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for k, (run, ms) in enumerate(models.items()):
        for j, (t, m) in enumerate(ms):
            h = [e for e in (m["_history"] or []) if "val" in e]
            for ax, (key, _) in zip(axes, panels):
                pts = [(e["epoch"], e["val"][key]) for e in h if key in e["val"]]
                if not pts:
                    continue
                ax.plot(*zip(*pts), color=f"C{k}", lw=1,
                        label=DISPLAY.get(run, run) if j == 0 else None)
                best = [v for ep, v in pts if ep == m.get("best_epoch")]
                if best:  # the epoch whose weights were evaluated
                    ax.plot([m["best_epoch"]], best, "o", color=f"C{k}", ms=3)
    for ax, (key, label) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title("dots: the evaluated (best) epoch", fontsize=8)
    fig.tight_layout()
    name = f"training_{tag}.png"
    fig.savefig(report / name, dpi=100)
    plt.close(fig)
    names.append(name)
    if fitted:
        sel = {DISPLAY.get(r, r): ms[0][1]["track_selection"] for r, ms in fitted.items()
               if "track_selection" in ms[0][1]}
        name = f"track_selection_{tag}.png"
        P.track_selection(sel, report / name)
        names.append(name)
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for run, ms in fitted.items():
            h = ms[0][1]["vertex"]["hist"]
            for row, key in enumerate(("residual", "pull")):
                lo, hi, nb = h[f"{key}_bins"]
                edges = np.linspace(lo, hi, int(nb) + 1)
                for k in range(3):
                    c = np.asarray(h[key][k], np.float64)
                    axes[row, k].stairs(c / max(c.sum(), 1) / np.diff(edges), edges,
                                        label=DISPLAY.get(run, run))
                    axes[row, k].set_xlabel(f"{'fitted - true' if row == 0 else 'pull'} "
                                            f"{'xyz'[k]}{' [mm]' if row == 0 else ''}")
                    axes[row, k].set_yscale("log")
                    axes[row, k].grid(alpha=0.3)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle("b- and c-jet vertices vs the true heavy-flavour decay vertex")
        fig.tight_layout()
        name = f"vertex_{tag}.png"
        fig.savefig(report / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


def _sample(spec: dict) -> str:
    if "shards" in spec:
        sh = spec["shards"]
        return " + ".join(
            f"{g['count']} shards x {g['jets']} "
            f"{(g.get('generate') or {}).get('only', 'balanced')} jets (seeds {g['first']}-"
            f"{g['first'] + g['count'] - 1})" for g in (sh if isinstance(sh, list) else [sh]))
    return f"{spec['jets']} balanced jets (seed {spec['seed']})"


def write(study: dict, trainings: list, paper: dict, remaining: str) -> str:
    """Write ``<report>/report.md`` and the plots for the study's ``trainings``
    (:class:`ndive_models.paper.Training`), beside the ``paper``'s numbers
    (:data:`ndive_models.paper.PAPER`), with the table ``remaining``
    (:func:`ndive_models.paper.plan`); returns the text."""
    report = Path(study["report"])
    report.mkdir(parents=True, exist_ok=True)
    _display(trainings)
    done = [t for t in trainings if (t.result / "metrics.json").exists()]
    title = study.get("title") or (f"Study {study.get('shown') or study['source']}: "
                                   "baseline vs FTAG+NDIVE")
    L = [f"# {title}", "",
         (f"{len(done)} of {len(trainings)} trainings have finished. This page is rewritten "
         "by `ndive paper` from the per-training results in this directory "
         "(`<condition>/<training>/metrics.json`); rerun the study's command to continue "
         "it, or `--report-only` to rewrite this page."), ""]
    tr = study["training"]
    L += ["## Settings", "",
          (f"- training: at most {tr.get('epochs')} epochs, patience {tr.get('patience')}, "
          f"batch {tr.get('batch_size')}, {tr.get('optimizer')} lr {tr.get('lr')}"
          + (f" ({tr['lr_schedule']} schedule, {tr.get('warmup_epochs', 0)} warm-up "
             "epochs)" if tr.get("lr_schedule", "constant") != "constant" else "") + ", "
          f"validation fraction {tr.get('val_fraction', 0.1)}, model {tr.get('model')}"),
          (f"- data: {_sample(study['data']['train'])} for training (a fraction "
          f"{tr.get('val_fraction', 0.1)} validates), {_sample(study['data']['test'])} for "
          "the test" + "".join(f" ({c}: {_sample(c_spec['test'])})" for c, c_spec in
                               (study.get("conditions") or {}).items() if "test" in c_spec)),
          f"- {study['jobs']} trainings at a time, {study['threads']} thread(s) each", ""]
    answers, sections, answer_rows = [], [], []
    for cond in dict.fromkeys(t.condition for t in trainings):
        sections += _condition(study, trainings, cond, report, paper, answers, answer_rows)
    if answers:  # the question first, the evidence below
        figure = []
        if answer_rows:
            from . import _plots as P

            P.ratio_summary(answer_rows, report / "answer.png", paper["gain_at_70"])
            figure = [("![The answer's ratios at 70% b-efficiency, ± total 1-sigma; solid "
                       "line: no gain, dashed: the paper's](answer.png)"), ""]
        L[4:4] = ["## The answer so far", "",
                  ("Is FTAG+NDIVE's light-jet rejection at 70% b-efficiency above the "
                   "baseline's? Ratio ± total uncertainty (seed spread and test statistics "
                   "in quadrature); confirmed at >= 3 sigma from 1."), "", *answers, "",
                  *figure]
    L += sections
    L += ["## What remains", "", remaining, "",
          "## How the uncertainties are combined", "",
          ("Every training is evaluated on the same test jets. Its rejections are computed on "
          "the full test set and on 200 bootstrap replicates (test jets drawn with "
          "replacement, seed 17: the same replicates for every training). For a model, the "
          "number quoted is the mean over its seeds; **seed** is the standard error of that "
          "mean (sd over seeds / sqrt(n)); **stat** is the sd over replicates of the "
          "replicate's seed mean. For a ratio A/B of seed means, **seed** propagates the two "
          "standard errors and **stat** is the sd over replicates of the ratio computed on "
          "each replicate (both models see the same resampled jets, so their correlation "
          "through the shared test set is kept). A model with one seed (†) takes the "
          "relative spread of one training of the same model config with the most seeds as "
          "its own (its own is unknown): an estimate. "
          "**total** = seed and stat in quadrature; "
          "this is conservative, since the spread between seeds on one test set also "
          "contains part of the test-set fluctuation. The **projection** under the verdict "
          "scales the seed term to the planned seeds at the relative seed spreads measured "
          "so far and keeps the stat term; spreads from 2-3 seeds are uncertain by a factor "
          "~2, so it guides the plan and is no result."), ""]
    text = "\n".join(L) + "\n"
    (report / "report.md").write_text(text)
    return text
