"""The resumable study runner (``ndive paper``): data as shards, skip / resume, the
committed per-training results, the uncertainty combination of the report."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys

import numpy as np
import pytest

from ndive_models import _metrics, cli, paper

# the session sample of conftest.py (its seed and size: the shard spec that reuses it)
N_JETS, SEED = 2000, 20231019


# --------------------------------------------------------------------------------------------
# uncertainties
# --------------------------------------------------------------------------------------------
def test_ratio_seed_term_is_the_propagated_standard_errors():
    r = _metrics.ratio_uncertainty([1.0, 3.0], [2.0, 2.0])
    # ratio 1; sd(num) = sqrt(2), standard error sqrt(2)/sqrt(2) = 1 on a mean of 2
    assert r["ratio"] == pytest.approx(1.0)
    assert r["seed"] == pytest.approx(0.5)
    assert np.isnan(r["stat"]) and r["per_seed"] == [0.5, 1.5]
    one = _metrics.ratio_uncertainty([2.0], [1.0, 1.2])
    assert np.isnan(one["seed"]) and np.isnan(one["total"])


def test_one_seed_ratio_borrows_a_given_seed_spread():
    """A one-seed model's unknown spread is replaced by the one given (that of a sibling
    model with several seeds), and the result says so."""
    den = [1.0, 1.2]
    one = _metrics.ratio_uncertainty([2.0], den, num_spread=0.1)
    # relative standard errors in quadrature: 0.1 for the one training, sd/sqrt(2)/mean
    rel_b = np.std(den, ddof=1) / np.sqrt(2) / np.mean(den)
    assert one["seed"] == pytest.approx(one["ratio"] * np.hypot(0.1, rel_b))
    assert one["borrowed"]
    # a model with seeds of its own keeps its own spread: nothing is borrowed
    own = _metrics.ratio_uncertainty([2.0, 2.2], den, num_spread=0.5)
    assert own["seed"] == pytest.approx(_metrics.ratio_uncertainty([2.0, 2.2], den)["seed"])
    assert not own["borrowed"]
    # both with one seed: both spreads
    both = _metrics.ratio_uncertainty([2.0], [1.0], num_spread=0.1, den_spread=0.2)
    assert both["seed"] == pytest.approx(2.0 * np.hypot(0.1, 0.2))


def _fake_metrics(light: float, c: float, n_boot: int = 50, rel: float = 0.03) -> dict:
    """``metrics.json`` as the report reads it: rejections at the report's WPs and their
    bootstrap replicates (``rel`` relative scatter)."""
    from ndive_models._study_report import WPS

    rng = np.random.default_rng(int(light))
    m = {"rejection": {}, "bootstrap": {}}
    for bkg, v in (("light", light), ("c", c)):
        m["rejection"][bkg] = {wp: {"rejection": v} for wp in WPS}
        m["bootstrap"][bkg] = {wp: list(v * (1 + rel * rng.normal(size=n_boot)))
                               for wp in WPS}
    return m


def test_answer_figure_holds_the_ratios_of_the_answer(tmp_path):
    """The answer's figure: FTAG+NDIVE / baseline, FTAG+NDIVE / each versus run with a
    result, and each such run / baseline (size alone), light and c at 70%."""
    from ndive_models._plots import ratio_summary
    from ndive_models._study_report import DISPLAY, _ratio, _spreads, summary_rows

    study = {"runs": [{"name": "baseline", "config": "baseline"},
                      {"name": "ftag_ndive", "config": "ftag_ndive",
                       "versus": ["baseline_dim54", "not_trained"]},
                      {"name": "baseline_dim54", "config": "baseline"}]}
    tagged = {"baseline": [(None, _fake_metrics(x, 15.0)) for x in (800.0, 900.0)],
              "ftag_ndive": [(None, _fake_metrics(x, 16.0)) for x in (1000.0, 1100.0)],
              "baseline_dim54": [(None, _fake_metrics(x, 17.0)) for x in (1100.0, 1200.0)]}
    spreads = _spreads(study, tagged)
    rows = summary_rows(study, tagged, spreads, "clean")
    name = {r: DISPLAY.get(r, r) for r in tagged}
    assert [(r[1], r[2]) for r in rows] == [
        (f"{name[a]} / {name[b]}", bkg)
        for a, b in (("ftag_ndive", "baseline"), ("ftag_ndive", "baseline_dim54"),
                     ("baseline_dim54", "baseline")) for bkg in ("light", "c")]
    assert rows[2][3] == pytest.approx(1050.0 / 1150.0)
    assert rows[2][4] == pytest.approx(
        _ratio(tagged, spreads, "ftag_ndive", "baseline_dim54", "light", "0.70")["total"])
    assert {r[0] for r in rows} == {"clean"}
    # a second condition and a ratio without a total (one seed, no sibling) still draw
    path = tmp_path / "answer.png"
    ratio_summary(rows + [("realistic", rows[0][1], "light", 1.1, float("nan"))], path,
                  {"light": 1.27, "c": 1.13})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compares_the_versus_pairs_with_a_borrowed_seed_term():
    """A run with ``versus`` gets its own row of ratios; a one-seed run's ratios take the
    seed spread of the run of the same model config with the most seeds, marked †."""
    from ndive_models._study_report import _pairs, _ratio, _spreads

    study = {"runs": [{"name": "baseline", "config": "baseline"},
                      {"name": "ftag_ndive", "config": "ftag_ndive"},
                      {"name": "baseline_dim64", "config": "baseline"},
                      {"name": "ftag_ndive_dim64", "config": "ftag_ndive",
                       "versus": ["baseline_dim64"]}]}
    base = [800.0, 900.0, 1000.0]
    tagged = {"baseline": [(None, _fake_metrics(x, 15.0)) for x in base],
              "ftag_ndive": [(None, _fake_metrics(x, 16.0)) for x in (1000.0, 1100.0)],
              "baseline_dim64": [(None, _fake_metrics(1000.0, 17.0))],
              "ftag_ndive_dim64": [(None, _fake_metrics(1300.0, 18.0))]}
    spreads = _spreads(study, tagged)
    assert spreads == {"baseline_dim64": ("baseline", 3), "ftag_ndive_dim64": ("ftag_ndive", 2)}
    r = _ratio(tagged, spreads, "ftag_ndive_dim64", "baseline_dim64", "light", "0.70")
    s_a = np.std([1000.0, 1100.0], ddof=1) / 1050.0
    s_b = np.std(base, ddof=1) / 900.0
    assert r["ratio"] == pytest.approx(1.3)
    assert r["seed"] == pytest.approx(1.3 * np.hypot(s_a, s_b)) and r["borrowed"]
    text = "\n".join(_pairs(study, tagged, spreads))
    assert "| FTAG+NDIVE / Baseline (GN2-like) | light |" not in text
    row = next(x for x in text.splitlines() if x.startswith("| ftag_ndive_dim64 / "
                                                             "baseline_dim64 | light"))
    assert f"1.300 ± {r['total']:.3f} †" in row
    assert "ftag_ndive_dim64 from FTAG+NDIVE (2 seeds" in text
    # the answer's sentence for a run with a versus partner; none without one
    from ndive_models._study_report import versus_sentence

    study["runs"][1]["versus"] = ["nope", "baseline_dim64"]  # one without a result
    r = _ratio(tagged, spreads, "ftag_ndive", "baseline_dim64", "light", "0.70")
    z = (r["ratio"] - 1) / r["total"]
    c = _ratio(tagged, spreads, "ftag_ndive", "baseline_dim64", "c", "0.70")
    assert c["ratio"] == pytest.approx(16.0 / 17.0)
    assert versus_sentence(study, tagged, spreads, "ftag_ndive") == (
        f" Against baseline_dim64 instead: light ratio {r['ratio']:.3f} ± {r['total']:.3f} †, "
        f"{z:+.1f} sigma from 1; c {c['ratio']:.3f} ± {c['total']:.3f} †, "
        f"{(c['ratio'] - 1) / c['total']:+.1f} sigma from 1 (2 vs 1 seeds).")
    assert versus_sentence(study, tagged, spreads, "baseline") == ""
    # against a run of equal size the light ratio's verdict is the vertex fit's own
    same = versus_sentence(study, tagged, spreads, "ftag_ndive",
                           params={"ftag_ndive": 47213, "baseline_dim64": 46290})
    assert same.startswith(" At equal size (47,213 vs 46,290 parameters), against "
                           "baseline_dim64 instead: ")
    assert same.endswith("(2 vs 1 seeds): for the vertex fit itself, **no gain is seen**.")
    bigger = versus_sentence(study, tagged, spreads, "ftag_ndive",
                             params={"ftag_ndive": 47213, "baseline_dim64": 64460})
    assert bigger.startswith(" Against ") and "vertex fit itself" not in bigger
    tagged["baseline_dim64"] = [(None, _fake_metrics(800.0, 17.0))] * 3
    gain = versus_sentence(study, tagged, spreads, "ftag_ndive",
                            params={"ftag_ndive": 47213, "baseline_dim64": 46290})
    assert gain.endswith(": for the vertex fit itself, the gain is **confirmed**.")
    # without a finished partner there is no pair; without a sibling, stat only
    del tagged["baseline_dim64"]
    assert _pairs(study, tagged, _spreads(study, tagged)) == []
    lone = {"baseline": tagged["baseline"], "x": [(None, _fake_metrics(950.0, 15.0))]}
    study["runs"].append({"name": "x", "config": "dips"})
    assert _spreads(study, lone) == {}
    assert "(stat only)" in _ratio_cell_of(lone, "x")


def test_moonshot_is_for_the_vertex_fit_ideas_only():
    from types import SimpleNamespace

    from ndive_models._study_report import moonshot_runs

    study = {"runs": [{"name": "baseline", "config": "baseline"},
                      {"name": "ftag_ndive", "config": "ftag_ndive"},
                      {"name": "truth", "config": "ftag_ndive", "reference": True},
                      {"name": "fitinfo", "config": "ftag_ndive"},
                      {"name": "baseline_dim64", "config": "baseline"}]}
    tagged = {r["name"]: [(SimpleNamespace(reference=r.get("reference", False)), {})]
              for r in study["runs"]}
    assert moonshot_runs(study, tagged, "baseline") == ["ftag_ndive", "fitinfo"]


def test_moonshot_only_in_its_conditions_and_against_its_own_control():
    """The study's ``moonshot`` names the conditions it is for; the best run (a larger
    FTAG+NDIVE here, best against the small baseline) also comes against its ``versus``
    baseline of its own size, not against the idea it is compared with."""
    from ndive_models._study_report import _ratio, _spreads, moonshot_goal

    study = {"runs": [{"name": "baseline", "config": "baseline"},
                      {"name": "ftag_ndive", "config": "ftag_ndive", "versus": ["big"]},
                      {"name": "big", "config": "baseline"},
                      {"name": "ftag_ndive_big", "config": "ftag_ndive",
                       "versus": ["big", "ftag_ndive"]}],
             "moonshot": {"ratio": 1.5, "conditions": ["realistic"]}}
    tagged = {"baseline": [(None, _fake_metrics(800.0, 20.0)),
                           (None, _fake_metrics(840.0, 20.0))],
              "ftag_ndive": [(None, _fake_metrics(900.0, 20.0)),
                             (None, _fake_metrics(960.0, 20.0))],
              "big": [(None, _fake_metrics(1200.0, 20.0)),
                      (None, _fake_metrics(1100.0, 20.0))],
              "ftag_ndive_big": [(None, _fake_metrics(1300.0, 20.0))]}
    spreads = _spreads(study, tagged)
    ratios = {(r, "light", "0.70"): _ratio(tagged, spreads, r, "baseline", "light", "0.70")
              for r in tagged}
    assert moonshot_goal(study, tagged, spreads, ratios, "baseline", "clean") == (
        None, None, [])
    goal, best, controls = moonshot_goal(study, tagged, spreads, ratios, "baseline",
                                         "realistic")
    assert goal == 1.5 and best[0] == "ftag_ndive_big"
    assert best[1]["ratio"] == pytest.approx(1300 / 820)
    assert [lab for lab, _ in controls] == ["big"]
    assert controls[0][1]["ratio"] == pytest.approx(1300 / 1150)
    # without conditions the goal holds in every condition; without the key in none
    del study["moonshot"]["conditions"]
    assert moonshot_goal(study, tagged, spreads, ratios, "baseline", "clean")[0] == 1.5
    del study["moonshot"]
    assert moonshot_goal(study, tagged, spreads, ratios, "baseline", "realistic")[0] is None


def test_moonshot_key_is_checked(tmp_path):
    base = {"data": {"train": {"jets": 10, "seed": 1}, "test": {"jets": 10, "seed": 2}},
            "conditions": {"clean": {}, "realistic": {}},
            "seeds": 1, "training": {}, "jobs": 1, "threads": 1, "workdir": "w",
            "report": "r", "runs": [{"name": "baseline", "config": "baseline"}]}
    path = tmp_path / "s.yaml"
    for bad in ({"ratio": 1.5, "conditions": ["nope"]}, {"ratio": -1}, {"ratio": True},
                {"ratio": 1.5, "when": 1}, 1.5, {"conditions": ["clean"]}):
        path.write_text(json.dumps({**base, "moonshot": bad}))
        with pytest.raises(paper.StudyError, match=r"moonshot must be \{ratio: .*"
                           rf"\['clean', 'realistic'\].*got {re.escape(repr(bad))}"):
            paper.load_study(str(path))
    path.write_text(json.dumps({**base, "moonshot": {"ratio": 2, "conditions": ["clean"]}}))
    assert paper.load_study(str(path))["moonshot"] == {"ratio": 2, "conditions": ["clean"]}


def _ratio_cell_of(tagged, run) -> str:
    from ndive_models._study_report import _ratio, _ratio_cell

    return _ratio_cell(_ratio(tagged, {}, run, "baseline", "light", "0.70"))


def test_versus_must_name_another_run(tmp_path):
    for bad in ("nope", "baseline", ["baseline"], 3):
        text = {"data": {"train": {"jets": 10, "seed": 1}, "test": {"jets": 10, "seed": 2}},
                "seeds": 1, "training": {}, "jobs": 1, "threads": 1, "workdir": "w",
                "report": "r", "runs": [{"name": "baseline", "config": "baseline",
                                         "versus": bad}]}
        path = tmp_path / "s.yaml"
        path.write_text(json.dumps(text))
        with pytest.raises(paper.StudyError, match=r"run baseline: versus must name another "
                           rf"run of the study, or list such runs .*got {re.escape(repr(bad))}"):
            paper.load_study(str(path))
    # a name is read as a one-name list
    text["runs"] += [{"name": "ftag_ndive", "config": "ftag_ndive", "versus": "baseline"}]
    text["runs"][0]["versus"] = ["ftag_ndive"]
    path.write_text(json.dumps(text))
    assert [r["versus"] for r in paper.load_study(str(path))["runs"]] == [["ftag_ndive"],
                                                                           ["baseline"]]


def test_ratio_stat_term_keeps_the_correlation_of_the_shared_test_set():
    rng = np.random.default_rng(0)
    eps = rng.normal(0, 0.1, 500)
    den_b = np.tile(100 * (1 + eps), (3, 1))
    # fully correlated with the baseline on every replicate: no statistical error of the ratio
    same = _metrics.ratio_uncertainty([150.0] * 3, [100.0] * 3, 1.5 * den_b, den_b)
    assert same["stat"] == pytest.approx(0.0, abs=1e-12) and same["seed"] == 0.0
    # independent fluctuations: the relative errors add
    other = np.tile(150 * (1 + rng.normal(0, 0.1, 500)), (3, 1))
    ind = _metrics.ratio_uncertainty([150.0] * 3, [100.0] * 3, other, den_b)
    assert ind["stat"] == pytest.approx(1.5 * np.hypot(0.1, 0.1), rel=0.15)
    # total: seed and stat in quadrature
    mixed = _metrics.ratio_uncertainty([140.0, 150.0, 160.0], [100.0] * 3, other, den_b)
    assert mixed["total"] == pytest.approx(np.hypot(mixed["seed"], mixed["stat"]))
    assert mixed["seed"] == pytest.approx(1.5 * 10 / np.sqrt(3) / 150)


def test_verdict_gives_no_significance_without_a_seed_spread():
    from ndive_models._study_report import verdict_line

    one = _metrics.ratio_uncertainty([1050.0], [825.0, 988.0], [[1000.0, 1100.0]],
                                     [[800.0, 850.0], [950.0, 1020.0]])
    line = verdict_line("light", one, 1, 2, 1.27)
    assert "(stat only" in line and "no significance yet" in line and "sigma from" not in line
    two = _metrics.ratio_uncertainty([1050.0, 1150.0], [825.0, 988.0],
                                     [[1000.0, 1100.0], [1120.0, 1180.0]],
                                     [[800.0, 850.0], [950.0, 1020.0]])
    line = verdict_line("light", two, 2, 2, 1.27)
    sig = two["total"]
    assert f"{(two['ratio'] - 1) / sig:+.1f} sigma from 1" in line
    assert ("is met" if sig <= 0.08 else "is not met") in line


def test_answer_names_the_verdict_by_its_significance():
    """The report's answer: confirmed at >= 3 sigma above 1, indicated at 2-3, not seen
    within 2, worse at <= -2; the paper's gain named when 2 sigma away; preliminary until
    the planned seeds are in."""
    from ndive_models._study_report import answer_line

    def r(ratio, total):
        return {"ratio": ratio, "total": total}

    c = r(1.06, 0.03)
    assert "**confirmed**" in answer_line("clean", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27)
    line = answer_line("clean", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27)
    assert "+3.2 sigma from 1" in line and "preliminary" not in line and "paper's" not in line
    assert "**indicated**" in answer_line("x", r(1.18, 0.075), c, 5, 5, (5, 5), 1.27)
    assert "**no gain is seen**" in answer_line("x", r(1.05, 0.075), c, 5, 5, (5, 5), 1.27)
    worse = answer_line("x", r(0.8, 0.075), c, 5, 5, (5, 5), 1.27)
    assert "**worse**" in worse and "smaller than the paper's (-6.3 sigma)" in worse
    assert "4 vs 5 seeds of 5 vs 5 planned: preliminary" in answer_line(
        "x", r(1.24, 0.075), c, 4, 5, (5, 5), 1.27)
    one = answer_line("x", r(1.24, math.inf), c, 1, 5, (5, 5), 1.27)
    assert "no significance with one seed" in one and "sigma from 1" not in one
    moon = answer_line("x", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27, ("idea", r(1.6, 0.2)),
                       1.5)
    assert moon.endswith("Moonshot (light ratio >= 1.5): reached (best: idea, 1.600 ± 0.200).")
    assert "not reached (best: FTAG+NDIVE, 1.240 ± 0.075)" in answer_line(
        "x", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27, ("FTAG+NDIVE", r(1.24, 0.075)), 1.5)
    # the goal is the study's: none given, no sentence; another goal, another verdict
    assert "Moonshot" not in answer_line("x", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27,
                                         ("idea", r(1.6, 0.2)))
    assert "Moonshot (light ratio >= 2): not reached (best: idea" in answer_line(
        "x", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27, ("idea", r(1.6, 0.2)), 2.0)
    # the best run's own controls follow its ratio
    assert moon.replace("0.200).", "0.200; 1.050 ± 0.100 against big baseline).") == (
        answer_line("x", r(1.24, 0.075), c, 5, 5, (5, 5), 1.27, ("idea", r(1.6, 0.2)), 1.5,
                    [("big baseline", r(1.05, 0.1))]))
    assert answer_line("realistic", None, None, 0, 2, (5, 5), 1.27) == (
        "- **realistic**: no answer yet (0 of 5 FTAG+NDIVE and 2 of 5 baseline trainings "
        "finished).")


def test_projection_agrees_with_the_ratio_it_extrapolates():
    """At k seeds of each the projection is what ratio_uncertainty gives for k seeds with
    the same relative spreads; the seeds the target needs are the first k under it."""
    from ndive_models._study_report import projection_line

    a, b = [1137.0, 985.0], [777.0, 970.0, 859.0]
    for k in (2, 3):  # k seeds with a's and b's relative sd: the measured samples, resized
        ak = np.mean(a) * (1 + np.std(a, ddof=1) / np.mean(a) * _unit_sd(k))
        bk = np.mean(b) * (1 + np.std(b, ddof=1) / np.mean(b) * _unit_sd(k))
        r = _metrics.ratio_uncertainty(ak, bk)
        assert _metrics.projected_ratio_total(a, b, 0.0, k) == pytest.approx(r["seed"])
    assert _metrics.projected_ratio_total(a, b, 0.03, 5) == pytest.approx(
        np.hypot(_metrics.projected_ratio_total(a, b, 0.0, 5), 0.03))
    need = _metrics.seeds_for_target(a, b, 0.03, 0.08)
    assert _metrics.projected_ratio_total(a, b, 0.03, need) <= 0.08
    assert _metrics.projected_ratio_total(a, b, 0.03, need - 1) > 0.08
    assert _metrics.seeds_for_target(a, b, 0.09, 0.08) is None  # stat alone is over
    assert _metrics.seeds_for_target([1.0], b, 0.0, 0.08) is None
    line = projection_line(np.array(a), np.array(b), 0.03, 5)
    assert f"5 seeds of each would give ± {_metrics.projected_ratio_total(a, b, 0.03, 5):.3f}" \
        in line and f"needs {need} seeds of each" in line
    assert projection_line(np.array(a[:1]), np.array(b), 0.03, 5) is None
    assert projection_line(np.array(a), np.array(b), 0.03, 2) is None  # all planned are in


def test_report_names_many_test_files_by_their_range():
    """A hundred test shards are named by the first, the last and their count; a few are
    all named."""
    from ndive_models._study_report import file_list

    names = [f"shard_s{s}.h5" for s in range(2001, 2097)]
    assert file_list(names) == "shard_s2001.h5 ... shard_s2096.h5: 96 files"
    assert file_list(names[:3]) == "shard_s2001.h5, shard_s2002.h5, shard_s2003.h5"
    assert file_list(names[:5], most=5).count(",") == 4


def test_report_describes_each_group_of_shards():
    from ndive_models._study_report import _sample

    spec = {"shards": [{"first": 2001, "count": 12, "jets": 20000},
                       {"first": 3001, "count": 28, "jets": 20000,
                        "generate": {"only": "light", "balance": False}}]}
    assert _sample(spec) == ("12 shards x 20000 balanced jets (seeds 2001-2012) + 28 shards "
                             "x 20000 light jets (seeds 3001-3028)")
    assert _sample({"shards": spec["shards"][0]}) == ("12 shards x 20000 balanced jets "
                                                      "(seeds 2001-2012)")


def _unit_sd(k):
    """k values with mean 0 and sample sd 1."""
    x = np.arange(k, dtype=np.float64)
    return (x - x.mean()) / np.std(x, ddof=1)


def test_seed_mean_uncertainty():
    boot = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    u = _metrics.seed_mean_uncertainty([2.0, 4.0], boot)
    assert u["mean"] == 3.0 and u["seed_sd"] == pytest.approx(np.sqrt(2))
    assert u["seed"] == pytest.approx(1.0)
    assert u["stat"] == pytest.approx(np.std([2.0, 3.0, 4.0], ddof=1))
    assert u["total"] == pytest.approx(np.hypot(1.0, 1.0))


def test_bootstrap_replicates_are_common_and_are_resamples():
    from ndive_models._metrics import roc_curve

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 3000)
    disc = rng.normal(labels == 0, 1.0)
    a = paper.bootstrap_rejections(disc, labels, (0.7,), n_boot=5)
    b = paper.bootstrap_rejections(disc + 0.0, labels, (0.7,), n_boot=5)
    np.testing.assert_array_equal(a["light"], b["light"])
    idx = np.random.default_rng(paper.BOOTSTRAP_SEED).integers(0, 3000, 3000)
    np.testing.assert_allclose(a["light"][0], roc_curve(disc[idx], labels[idx], (0.7,)))
    assert np.std(a["light"][:, 0]) > 0


# --------------------------------------------------------------------------------------------
# the shipped study
# --------------------------------------------------------------------------------------------
def test_shipped_study_describes_the_shards_and_runs(tmp_path):
    from ndive_models.generate import GenerationConfig

    study = paper.load_study("paper/study", {"data.dir": str(tmp_path)})
    tr = paper.shards(study, "clean", "train")
    te = paper.shards(study, "clean", "test")
    assert [p.name for p, _ in tr] == [f"shard_s{s}.h5" for s in range(1001, 1018)]
    # 96 test shards: 640k jets per flavour (docs/results/README.md, "Run 3")
    assert [p.name for p, _ in te] == [f"shard_s{s}.h5" for s in range(2001, 2097)]
    assert tr[0][0].parent == tmp_path / "clean"
    # `ndive generate --jets 20000 --seed 1001 --workers 1 --balance`
    assert paper.generation_config(tr[0][1]) == GenerationConfig(
        n_jets=20000, seed=1001, workers=1, balance=True)
    assert paper.shards(study, "realistic", "test")[0][1]["preset"] == "run3"
    # the realistic condition sizes its own test sample: 12 balanced shards (80k jets per
    # flavour) and 28 of light jets alone (640k light jets, as in the clean condition)
    rt = paper.shards(study, "realistic", "test")
    assert [p.name for p, _ in rt] == ([f"shard_s{s}.h5" for s in range(2001, 2013)]
                                       + [f"shard_s{s}.h5" for s in range(3001, 3029)])
    light = paper.generation_config(rt[-1][1])
    assert light.only == "light" and not light.balance and light.pileup_pool == 20000
    assert paper.generation_config(rt[0][1]).balance and rt[0][1].get("only") is None
    # its smoke test reads the first balanced shard alone
    smoke = paper.smoke_study(study)
    assert [p.name for p, _ in paper.shards(smoke, "realistic", "test")] == ["shard_s2001.h5"]
    ts = paper.study_trainings(study, only_conditions=["clean"])
    runs = [t.run for t in ts]
    # seed by seed: the compared models have as many seeds wherever the study stops;
    # the runs with their own seeds after them, in the study's order
    assert [t.name for t in ts[:4]] == ["baseline_s1", "ftag_ndive_s1", "baseline_s2",
                                        "ftag_ndive_s2"]
    assert runs[:10] == ["baseline", "ftag_ndive"] * 5 and runs[10] == "ndive"
    plain = paper.study_trainings({**study, "order": "runs"}, only_conditions=["clean"])
    assert [t.run for t in plain][:10] == ["baseline"] * 5 + ["ftag_ndive"] * 5
    with pytest.raises(paper.StudyError, match="order must be one of"):
        paper.load_study("paper/study", {"order": "random"})
    by = {t.name: t.cfg for t in ts}
    assert by["ftag_ndive_truth_s1"].model.weights == "truth"
    assert by["ftag_ndive_secondary_s1"].model.weights == "secondary"
    assert by["ftag_ndive_fitinfo_s1"].model.fit_features
    assert by["baseline_s3"].epochs == 20 and by["baseline_s3"].seed == 3
    assert by["baseline_s3"].lr_schedule == "cosine" and by["baseline_s3"].warmup_epochs == 1
    assert by["ftag_ndive_s2"].monitor == "flavour"
    # NDIVE alone has no flavour output: it is monitored on its own (vertex) loss
    assert by["ndive_s1"].monitor == "loss" and by["ndive_s1"].lr == 2e-4
    # a study whose settings give a run a loss its model lacks fails on loading, naming it
    bad = {**study, "runs": [{"name": "nd", "config": "ndive", "seeds": [1]}]}
    with pytest.raises(ValueError, match=r"run nd \(seed 1\): monitor: model 'ndive' has no "
                                         "validation loss 'flavour'"):
        paper.study_trainings(bad, only_conditions=["clean"])
    assert len(by["baseline_s1"].train) == 17
    assert by["ftag_ndive_dim64_s1"].model.dim == 64 and runs[-2:] == ["baseline_dim64",
                                                                        "ftag_ndive_dim64"]
    assert by["ftag_ndive_s1"].model.fit_compile and by["ftag_ndive_s1"].model.dim == 32
    # the dim-64 baseline is the parameter-count control of FTAG+NDIVE: 5 seeds; the dim-64
    # FTAG+NDIVE and the fit-features idea are compared with their own partners
    assert runs.count("baseline_dim64") == 5 and runs.count("ftag_ndive_dim64") == 1
    versus = {r["name"]: r.get("versus") for r in study["runs"]}
    assert versus["ftag_ndive_dim64"] == ["baseline_dim64"]
    assert versus["ftag_ndive_fitinfo"] == ["ftag_ndive"]
    assert versus["ftag_ndive"] == ["baseline_dim54", "baseline_dim64"]
    assert runs.count("baseline_dim54") == 5 and by["baseline_dim54_s1"].model.dim == 54
    # the realistic condition trains 8 seeds of the compared models (its seed spread),
    # the references once
    real = paper.study_trainings(study, only_conditions=["realistic"])
    assert [t.run for t in real][:16] == ["baseline", "ftag_ndive"] * 8
    assert [t.name for t in real][16:] == [t.name for t in ts][10:]


def test_runs_names_runs_or_single_trainings(tmp_path, capsys):
    """--runs takes a run (all its seeds) or one training (<run>_s<seed>); a name the study
    lacks is one clear error that lists its runs."""
    study = paper.load_study("paper/study", {"workdir": str(tmp_path),
                                             "data.dir": str(tmp_path)})
    ts = paper.study_trainings(study, only_conditions=["realistic"],
                               only_runs=["baseline_dim54", "ftag_ndive_s7"])
    assert sorted(t.name for t in ts) == ["baseline_dim54_s1", "baseline_dim54_s2",
                                          "baseline_dim54_s3", "baseline_dim54_s4",
                                          "baseline_dim54_s5", "ftag_ndive_s7"]
    with pytest.raises(ValueError, match=r"--runs: no run or training 'ftag_ndiv_s7'.*"
                                         r"'baseline_dim54'"):
        paper.run_study(study, only_runs=["ftag_ndiv_s7"], plan_only=True)
    assert paper.run_study(study, only_runs=["ftag_ndive_s7"], only_conditions=["realistic"],
                           plan_only=True) == 0
    assert "ftag_ndive_s7" in capsys.readouterr().out


def test_unavailable_preset_is_one_clear_error():
    with pytest.raises(paper.PresetUnavailable, match="no_such_preset"):
        paper.generation_config({"n_jets": 10, "preset": "no_such_preset"})


# --------------------------------------------------------------------------------------------
# data and trainings on the session sample
# --------------------------------------------------------------------------------------------
def _study(tmp_path, sample_path, **training):
    """A study whose one training and one test shard are the session sample (same seed and
    options, so it is reused, not generated)."""
    data = tmp_path / "data"
    (data / "clean").mkdir(parents=True)
    shutil.copy(sample_path, data / "clean" / f"shard_s{SEED}.h5")
    shard = {"shards": {"first": SEED, "count": 1, "jets": N_JETS}}
    text = {
        "data": {"dir": str(data), "train": shard, "test": shard, "workers": 2,
                 "generate": {"balance": False}},
        "conditions": {"clean": {"generate": {}}},
        "seeds": 1,
        "training": {"epochs": 1, "patience": 3, "batch_size": 100, "optimizer": "adamw",
                     "lr": 1e-3, "device": "cpu", "max_jets": 300, "max_val_jets": 100,
                     "model": {"dim": 8}, **training},
        "runs": [{"name": "baseline", "config": "baseline"}],
        "jobs": 1, "threads": 1, "workdir": str(tmp_path / "work"),
        "report": str(tmp_path / "results"),
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


def test_load_batch_of_shards_is_the_concatenation(sample_path):
    from ndive_models.data.loader import load_batch

    one, bz = load_batch(sample_path)
    two, bz2 = load_batch([sample_path, sample_path], N_JETS - 5, N_JETS + 7)
    assert bz2 == bz and two["valid"].shape[0] == 12
    for k in one:
        np.testing.assert_array_equal(two[k][:5].numpy(), one[k][-5:].numpy())
        np.testing.assert_array_equal(two[k][5:].numpy(), one[k][:7].numpy())


def test_existing_shard_with_other_options_is_refused(tmp_path, sample_path):
    study = paper.load_study(_study(tmp_path, sample_path), {"data.generate.balance": True})
    with pytest.raises(ValueError, match="balance is False, the study wants True"):
        paper.ensure_data(study, "clean")


def test_missing_shard_is_generated_once(tmp_path, sample_path, generate_extra):
    spath = _study(tmp_path, sample_path)
    study = paper.load_study(spath,
                             {"data.test.shards": {"first": 7, "count": 1, "jets": 30},
                              "data.train.shards": {"first": 7, "count": 1, "jets": 30},
                              "data.workers": 1})
    paper.ensure_data(study, "clean")
    path = tmp_path / "data" / "clean" / "shard_s7.h5"
    from ndive_models.data import read_attrs

    assert read_attrs(path)["n_jets"] == 30 and read_attrs(path)["seed"] == 7
    mtime = path.stat().st_mtime_ns
    paper.ensure_data(study, "clean")
    assert path.stat().st_mtime_ns == mtime
    # its CPU cost is in its log; the plan prices missing shards at the measured speed
    cpu = paper._shard_cpu_s(path)
    assert cpu is not None and cpu > 0
    more = paper.load_study(spath,
                            {"data.test.shards": {"first": 8, "count": 2, "jets": 30},
                             "data.train.shards": {"first": 7, "count": 1, "jets": 30},
                             "data.workers": 1})
    text, left = paper.plan(more, paper.study_trainings(more))
    assert f"jets per CPU second: clean {30 / cpu:.0f};" in text
    assert "2 missing shard(s)" in text
    assert left >= 60 / (30 / cpu) / 3600 * 0.999
    assert (f"{cpu / 3600:.1f} on generating the 1 shards whose generation was timed (1 on "
            "disk here)") in text
    # nothing missing: no generation speed to quote
    text, _ = paper.plan(study, paper.study_trainings(study))
    assert "0 missing shard(s)." in text and "jets per CPU second" not in text
    # the cost is also in the committed record: a fresh machine (no shard, no log) prices
    # the shard it must make again at that cost, and the others at its speed
    rec = paper.generation_record(study, "clean")
    assert rec == {"shard_s7.h5": {"jets": 30, "cpu_s": round(cpu, 1)}}
    assert (tmp_path / "results" / "clean" / paper.GENERATION_RECORD).exists()
    path.unlink()
    path.with_suffix(".log").unlink()
    text, fresh = paper.plan(more, paper.study_trainings(more))
    # and still counts what it cost to make it, from the record
    assert "3 missing shard(s)" in text and (
        f"{round(cpu, 1) / 3600:.1f} on generating the 1 shards whose generation was timed "
        "(0 on disk here)") in text
    assert f"jets per CPU second: clean {30 / round(cpu, 1):.0f};" in text
    (tmp_path / "results" / "clean" / paper.GENERATION_RECORD).unlink()
    text, assumed = paper.plan(more, paper.study_trainings(more))
    assert "(assumed: none measured yet)" in text  # the trainings' part is the same
    assert (fresh - assumed) * 3600 == pytest.approx(
        3 * round(cpu, 1) - 90 / paper.GENERATION_JETS_PER_S, rel=1e-6)


def test_runners_share_the_shards_to_make(tmp_path, sample_path, monkeypatch):
    """Two runners on one data directory make each missing shard once; one waiting for a
    shard whose maker died (its lock released, no file) makes it itself."""
    import fcntl
    import threading
    import time

    study = paper.load_study(_study(tmp_path, sample_path),
                             {"data.train.shards": {"first": 1, "count": 4, "jets": 30}})
    made, lock = [], threading.Lock()

    def generate(path, opt):
        with lock:
            made.append((threading.current_thread().name, path.name))
        time.sleep(0.2)
        path.write_bytes(b"shard")
        return 1.0

    monkeypatch.setattr(paper, "_generate_shard", generate)
    monkeypatch.setattr(paper, "_shard_mismatch", lambda path, cfg: None)
    names = [f"shard_s{s}.h5" for s in range(1, 5)]
    shutil.rmtree(tmp_path / "data", ignore_errors=True)  # a fresh machine: no data dir yet

    def runners():
        ts = [threading.Thread(target=paper.ensure_data, args=(study, "clean", 1),
                               kwargs={"parts": ("train",)}) for _ in (1, 2)]
        for t in ts:
            t.start()
        return ts

    for t in runners():
        t.join(30)
    assert sorted(n for _, n in made) == names  # each once
    assert len({r for r, _ in made}) == 2  # both worked (each in its own pool thread)
    assert paper.generation_record(study, "clean").keys() == set(names)
    # a maker holding shard 2 dies: the other makes the rest, waits, then makes shard 2
    for n in names:
        (tmp_path / "data" / "clean" / n).unlink()
    made.clear()
    dead = open(tmp_path / "data" / "clean" / "shard_s2.genlock", "a")
    fcntl.flock(dead, fcntl.LOCK_EX)
    t = threading.Thread(target=paper.ensure_data, args=(study, "clean", 1),
                         kwargs={"parts": ("train",)})
    t.start()
    deadline = time.monotonic() + 30
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [n for _, n in made] == [names[0], names[2], names[3]] and t.is_alive()
    dead.close()
    t.join(30)
    assert not t.is_alive() and [n for _, n in made][-1] == names[1]
    assert all((tmp_path / "data" / "clean" / n).exists() for n in names)


def test_default_data_dir_separates_the_conditions(tmp_path):
    """Without data.dir each condition has its own directory under <workdir>/data (their
    shards have the same names); a study without conditions keeps its files in workdir."""
    study = paper.load_study("paper/study", {"workdir": str(tmp_path)})
    del study["data"]["dir"]
    assert paper.data_dir(study, "clean") == tmp_path / "data" / "clean"
    assert paper.data_dir(study, "realistic") == tmp_path / "data" / "realistic"
    plain = paper.load_study("paper/default", {"workdir": str(tmp_path)})
    assert paper.data_dir(plain, "") == tmp_path


def test_smoke_runs_every_run_once_beside_the_study(tmp_path, sample_path, capsys):
    """--smoke: one epoch of every run on the first shards, under workdir/smoke; the study's
    own report and trainings are not touched."""
    path = _study(tmp_path, sample_path)
    text = json.loads(path.read_text())
    text["runs"] += [{"name": "ndive", "config": "ndive", "set": {"monitor": "loss"},
                      "seeds": [3, 4], "reference": True}]
    text["seeds"] = 5
    text["data"]["train"]["shards"]["count"] = 4  # only the first exists: the smoke needs no more
    text["data"]["test"]["shards"]["count"] = 3
    path.write_text(json.dumps(text))
    assert cli.main(["paper", "--study", str(path), "--smoke"]) == 0
    out = capsys.readouterr().out
    smoke = tmp_path / "work" / "smoke"
    done = sorted(p.parent.name for p in (smoke / "report").glob("clean/*/metrics.json"))
    assert done == ["baseline_s1", "ndive_s3"]
    h = json.loads((smoke / "report" / "clean" / "baseline_s1" / "history.json").read_text())
    assert len(h) == 1 and "Trainings: 2 done" in out
    assert "Smoke test of" in (smoke / "report" / "report.md").read_text()
    assert not (tmp_path / "results").exists()  # the study's results
    assert not (tmp_path / "work" / "clean").exists()  # ... and trainings untouched
    # only the first shard of each sample was needed (the others were never generated)
    assert sorted(p.name for p in (tmp_path / "data" / "clean").glob("*.h5")) == [
        f"shard_s{SEED}.h5"]


def test_study_skips_finished_and_resumes_unfinished(tmp_path, sample_path, capsys):
    path = _study(tmp_path, sample_path)
    assert cli.main(["paper", "--study", str(path), "--plan"]) == 0
    assert "| clean | baseline_s1 | todo | 0 / 1 |" in capsys.readouterr().out

    assert cli.main(["paper", "--study", str(path)]) == 0
    res = tmp_path / "results" / "clean" / "baseline_s1"
    m = json.loads((res / "metrics.json").read_text())
    assert set(m["rejection"]) == {"light", "c"} and len(m["bootstrap"]["light"]["0.70"]) == 200
    assert json.loads((res / "cpu.json").read_text())["train"]["cpu_s"] > 0
    from ndive_models.train import load_checkpoint

    model, ck = load_checkpoint(res / "best.pt")  # the committed checkpoint is usable
    assert "optimizer" not in ck
    report = (tmp_path / "results" / "report.md").read_text()
    assert "Rejections at fixed b-jet efficiency" in report
    # the cost table names the model's size (trainable parameters of the committed model)
    n = sum(p.numel() for p in model.parameters())
    assert f"| Baseline (GN2-like) | {n:,} | 1 |" in report
    assert "adamw lr 0.001, validation" in report  # a constant rate: no schedule named
    assert "counted only from a later epoch" not in report
    # a training whose first epochs ran before CPU records: out of the cost means, named
    rec = json.loads((res / "cpu.json").read_text())
    (res / "cpu.json").write_text(json.dumps({**rec, "train": {**rec["train"],
                                                               "from_epoch": 2}}))
    study = paper.load_study(path)
    paper.write_report(study, paper.study_trainings(study))
    report = (tmp_path / "results" / "report.md").read_text()
    assert "left out of the means): baseline_s1 (from epoch 2)" in report
    assert "| - (0 of 1) |" in report and "| ≥ " in report
    text, _ = paper.plan(study, paper.study_trainings(study))  # a lower bound, not a rate
    assert "| clean | baseline_s1 | done | 1 / 1 | ≥ " in text and "spent ≥ " in text
    assert paper._cpu_counts(paper.study_trainings(study)[0])[2] == 2
    (res / "cpu.json").write_text(json.dumps(rec))

    # a fresh clone: the results are there, the workdir is not -> nothing is retrained
    shutil.rmtree(tmp_path / "work")
    capsys.readouterr()
    assert cli.main(["paper", "--study", str(path)]) == 0
    out = capsys.readouterr().out
    assert "training clean/baseline_s1" not in out and not (tmp_path / "work").exists()
    assert "| clean | baseline_s1 | done | 1 / 1 |" in out
    # results on other test files than the study's (the test set was enlarged): evaluated
    # again from the committed checkpoint, still without a workdir; history kept
    m["test_files"] = ["an_older_test_shard.h5"]
    (res / "metrics.json").write_text(json.dumps(m))
    history = (res / "history.json").read_text()
    evals = json.loads((res / "cpu.json").read_text())["evaluate"]["invocations"]
    assert paper.study_trainings(paper.load_study(path))[0].status() == "stale"
    capsys.readouterr()
    assert cli.main(["paper", "--study", str(path)]) == 0
    out = capsys.readouterr().out
    assert "evaluating clean/baseline_s1 again" in out and "training clean" not in out
    again = json.loads((res / "metrics.json").read_text())
    assert again["test_files"] == [f"shard_s{SEED}.h5"]
    assert again["rejection"] == m["rejection"]  # same checkpoint, same test jets
    assert (res / "history.json").read_text() == history
    assert json.loads((res / "cpu.json").read_text())["evaluate"]["invocations"] == evals + 1
    # a study changed afterwards: the finished training is kept and flagged, not retrained
    capsys.readouterr()
    assert cli.main(["paper", "--study", str(path), "--lr", "0.5", "--plan"]) == 0
    assert "done (with other settings: lr: 0.001 -> 0.5)" in capsys.readouterr().out
    # another monitor that picks the same epoch changes nothing; one that would pick
    # another epoch is a difference
    assert cli.main(["paper", "--study", str(path), "--monitor", "flavour", "--plan"]) == 0
    assert "| clean | baseline_s1 | done | 1 / 1 |" in capsys.readouterr().out
    h = json.loads((res / "history.json").read_text())
    (res / "history.json").write_text(json.dumps(h + [{**h[0], "epoch": 2, "val": {
        **h[0]["val"], "loss": h[0]["val"]["loss"] + 1, "flavour": 0.0}}]))
    assert cli.main(["paper", "--study", str(path), "--monitor", "flavour", "--plan"]) == 0
    assert "(with other settings: monitor: 'loss' -> 'flavour')" in capsys.readouterr().out
    (res / "history.json").write_text(json.dumps(h))

    # an unfinished training (a last.pt from 1 of 2 epochs) resumes and keeps epoch 1
    shutil.rmtree(res)
    work = tmp_path / "work" / "clean" / "runs" / "baseline_s1"
    study = paper.load_study(path, {"training.epochs": 2})
    t = paper.study_trainings(study)[0]
    from dataclasses import replace

    from ndive_models.train import train

    first = train(replace(t.cfg, epochs=1))
    assert t.status() == "partial" and len(first["history"]) == 1
    # the plan counts its CPU from the checkpoints (no runner record of a killed process)
    assert not (work / "cpu.json").exists()
    counted = json.loads((work / "train_cpu.json").read_text())["cpu_s"]
    assert paper._cpu_counts(t) == (counted, counted, 1) and counted > 0
    capsys.readouterr()
    assert cli.main(["paper", "--study", str(path), "--epochs", "2"]) == 0
    assert "training clean/baseline_s1 (resumed)" in capsys.readouterr().out
    hist = json.loads((res / "history.json").read_text())
    assert [e["epoch"] for e in hist] == [1, 2]
    assert hist[0]["train_loss"] == first["history"][0]["train_loss"]
    assert (work / "finished.json").exists()

    # a finished training in the workdir made with other settings is not published as the
    # study's (say a learning-rate schedule was added to the study after it finished)
    shutil.rmtree(res)
    capsys.readouterr()
    assert cli.main(["paper", "--study", str(path), "--epochs", "2",
                     "--lr-schedule", "cosine"]) == 1
    err = capsys.readouterr().err
    assert "finished with other settings than the study's (lr_schedule: 'constant' -> " \
        "'cosine')" in err and "move it away" in err
    assert not res.exists()
    study = paper.load_study(path, {"training.lr_schedule": "cosine",
                                    "training.warmup_epochs": 1})
    paper.write_report(study, paper.study_trainings(study))
    assert "adamw lr 0.001 (cosine schedule, 1 warm-up epochs)" in \
        (tmp_path / "results" / "report.md").read_text()


def test_an_unfinished_training_resumes_on_a_fresh_machine(tmp_path, sample_path, capsys):
    """While it trains, a training's last.pt and records are mirrored to <result>/partial
    (committed with the results); a fresh machine (no workdir) resumes from there, and the
    finished results replace the mirror. One with other settings is not resumed."""
    from dataclasses import replace

    from ndive_models.train import train

    path = _study(tmp_path, sample_path)
    study = paper.load_study(path, {"training.epochs": 2})
    t = paper.study_trainings(study)[0]
    first = train(replace(t.cfg, epochs=1))  # as a runner killed after epoch 1 leaves it
    (t.out / "config.yaml").write_text(json.dumps(t.cfg.to_dict()))  # the runner's config
    paper._mirror_partial(t)
    assert sorted(p.name for p in t.partial.iterdir()) == sorted(
        n for n in paper.PARTIAL_FILES if n != "cpu.json")  # no runner record yet
    mtime = (t.partial / "last.pt").stat().st_mtime_ns
    paper._mirror_partial(t)  # nothing newer: not copied again
    assert (t.partial / "last.pt").stat().st_mtime_ns == mtime
    shutil.rmtree(tmp_path / "work")  # a fresh machine
    assert t.status() == "partial"
    text, _ = paper.plan(study, [t])
    assert "| clean | baseline_s1 | partial | 1 / 2 |" in text
    other = paper.study_trainings(paper.load_study(path, {"training.epochs": 2,
                                                          "training.lr": 0.5}))[0]
    assert not paper._restore_partial(other) and not (other.out / "last.pt").exists()
    assert "lr: 0.001 -> 0.5" in capsys.readouterr().err
    assert cli.main(["paper", "--study", str(path), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resuming the committed unfinished training" in out and "(resumed)" in out
    hist = json.loads((t.result / "history.json").read_text())
    assert [e["epoch"] for e in hist] == [1, 2]
    assert hist[0]["train_loss"] == first["history"][0]["train_loss"]
    assert t.status() == "done" and not t.partial.exists()


def test_train_only_leaves_a_finished_training_to_evaluate_anywhere(tmp_path, sample_path,
                                                                   monkeypatch):
    """--train-only trains, makes no test shard and evaluates nothing; the finished training
    waits in its committed partial/, and a fresh machine evaluates it from there without
    making (or reading) the training shards."""
    parts, real_ensure = [], paper.ensure_data

    def ensure(study, cond, jobs=1, **kw):
        parts.append(kw.get("parts"))
        return real_ensure(study, cond, jobs, **kw)

    monkeypatch.setattr(paper, "ensure_data", ensure)
    path = _study(tmp_path, sample_path)
    assert cli.main(["paper", "--study", str(path), "--train-only"]) == 0
    t = paper.study_trainings(paper.load_study(path))[0]
    assert parts == [("train",)] and t.status() == "trained"
    assert not (t.result / "metrics.json").exists()
    assert {"best.pt", "last.pt", "finished.json", "cpu.json"} <= {
        p.name for p in t.partial.iterdir()}
    assert cli.main(["paper", "--study", str(path), "--train-only"]) == 0  # nothing to do
    assert parts == [("train",)]
    shutil.rmtree(tmp_path / "work")  # a fresh machine
    assert t.status() == "trained" and t.trained_in() == t.partial
    parts.clear()
    assert cli.main(["paper", "--study", str(path)]) == 0
    assert parts == [("test",)] and t.status() == "done" and not t.partial.exists()
    cpu = json.loads((t.result / "cpu.json").read_text())
    assert cpu["train"]["cpu_s"] > 0 and cpu["evaluate"]["cpu_s"] > 0
    assert json.loads((t.result / "history.json").read_text())[-1]["epoch"] == 1


def test_child_callback_runs_while_the_child_runs(tmp_path):
    calls = []
    with open(tmp_path / "log", "w") as f:
        rc, _ = paper._run_child([sys.executable, "-c", "import time; time.sleep(1.0)"], f, 1,
                                 every=(0.1, lambda: calls.append(1)))
    assert rc == 0 and len(calls) >= 3


def test_test_shards_are_made_after_the_training_shards(tmp_path, sample_path, monkeypatch):
    """The trainings start once the training shards exist; the test shards are checked (and
    made) only when the first training is evaluated, and not again for the next one."""
    events, made_with, real_ensure, real_train = [], [], paper.ensure_data, paper._train

    def ensure(study, cond, jobs=1, **kw):
        events.append(("data", kw.get("parts")))
        made_with.append(jobs)
        return real_ensure(study, cond, jobs, **kw)

    def training(t, threads):
        events.append(("train", t.name))
        return real_train(t, threads)

    monkeypatch.setattr(paper, "ensure_data", ensure)
    monkeypatch.setattr(paper, "_train", training)
    path = _study(tmp_path, sample_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "seeds": 2}))
    assert cli.main(["paper", "--study", str(path)]) == 0
    assert events == [("data", ("train",)), ("train", "baseline_s1"), ("data", ("test",)),
                      ("train", "baseline_s2")]
    # both finished, on another test set: evaluating them again needs no training shard
    # (a fresh machine makes only the test shards, all jobs at a time)
    study = paper.load_study(path)
    for t in paper.study_trainings(study):
        m = json.loads((t.result / "metrics.json").read_text())
        (t.result / "metrics.json").write_text(json.dumps({**m, "test_files": ["old.h5"]}))
        assert t.status() == "stale"
    events.clear()
    made_with.clear()
    assert cli.main(["paper", "--study", str(path), "--jobs", "2"]) == 0
    assert events == [("data", ("test",))] and made_with == [2]
    assert all(t.status() == "done" for t in paper.study_trainings(study))


def test_evaluation_reads_the_test_shards_one_at_a_time(tmp_path, sample_path, monkeypatch):
    """The metrics of a training evaluated shard by shard (memory for one shard) are those
    of the whole test set loaded at once: rejections, ROC, track selection, vertex."""
    import torch

    from ndive_models.data import loader
    from ndive_models.evaluate import predict
    from ndive_models.train import TrainConfig, load_checkpoint, train

    cfg = TrainConfig.from_dict(dict(
        train=str(sample_path), out=str(tmp_path / "m"), epochs=1, batch_size=100,
        max_jets=200, max_val_jets=100, lr=1e-3, progress=False, device="cpu",
        model=dict(name="ftag_ndive", dim=8, fit_compile=False)))
    train(cfg)
    second = tmp_path / "second.h5"
    shutil.copy(sample_path, second)
    files = [str(sample_path), str(second)]
    sizes = []
    real = loader.load_batch

    def counting(paths, *a, **k):
        if isinstance(paths, (list, tuple)):
            sizes.append(len(paths))
        return real(paths, *a, **k)

    monkeypatch.setattr(loader, "load_batch", counting)
    streamed, _ = paper._evaluate(tmp_path / "m" / "best.pt", files)
    assert sizes == [1, 1]
    model, _ = load_checkpoint(tmp_path / "m" / "best.pt")
    batch, _ = real(files)
    with torch.no_grad():
        whole = paper.training_metrics(predict(model, batch), batch)
    assert streamed["n_test_jets"] == 2 * N_JETS
    for key in ("rejection", "roc", "bootstrap", "track_selection", "vertex",
                "fit_ok_fraction"):
        assert streamed[key] == whole[key], key


# --------------------------------------------------------------------------------------------
# the label-leak-free reference and the idea beyond the paper
# --------------------------------------------------------------------------------------------
def _model(sample_path, **cfg):
    from ndive_models.data.loader import load_batch
    from ndive_models.data.normalisation import feature_stats
    from ndive_models.models import ModelConfig, build_model

    batch, bz = load_batch(sample_path, 0, 300)
    return build_model(ModelConfig(**cfg), feature_stats(batch, bz), bz), batch


def test_secondary_weights_select_displaced_tracks_of_every_flavour(sample_path):
    import torch

    model, batch = _model(sample_path, name="ndive", weights="secondary")
    w, w_fit = model.track_weights(batch)
    displaced = torch.isin(batch["origin"], torch.tensor([3, 4, 5, 6, 7])) & batch["valid"]
    assert torch.equal(w.bool(), displaced) and torch.equal(w_fit, w)
    light = batch["flavour"] == 2
    # unlike the paper's truth weights, light jets get weights (K0s, Lambda, conversions)
    assert w[light].sum() > 0 and batch["truth_weight"][light].sum() < w[light].sum()
    assert torch.equal(w[~light & (batch["origin"] < 6).all(1)],
                       batch["truth_weight"][~light & (batch["origin"] < 6).all(1)])


def test_fit_features_reach_the_tagger(sample_path, monkeypatch):
    import torch

    from ndive_models.models.ftag_ndive import N_FIT_FEATURES, fit_features

    torch.manual_seed(0)
    model, batch = _model(sample_path, name="ftag_ndive", fit_features=True, dim=8)
    out = model(batch)
    f = fit_features(out)
    assert f.shape == batch["valid"].shape + (N_FIT_FEATURES,) and torch.isfinite(f).all()
    ok = out["fit_ok"]
    assert torch.allclose(f[..., 0][ok], torch.log1p(out["track_chi2"][ok]).to(f.dtype))
    assert (f[~ok][..., 1:4] == 0).all()  # vertex errors withheld where the fit failed
    loss = sum(w * s / n.clamp_min(1) for s, n, w in model.loss_terms(out, batch).values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the extra columns are read: zeroing them changes the tagger's output
    from ndive_models.models import ftag_ndive

    monkeypatch.setattr(ftag_ndive, "fit_features", lambda nd: torch.zeros_like(f))
    with torch.no_grad():
        assert not torch.allclose(model(batch)["flavour_logits"], out["flavour_logits"])


def test_a_training_another_runner_holds_is_left_alone(tmp_path, sample_path, capsys):
    path = _study(tmp_path, sample_path)
    t = paper.study_trainings(paper.load_study(path))[0]
    held = paper._lock(t)
    try:
        assert cli.main(["paper", "--study", str(path), "--plan"]) == 0
        assert "| clean | baseline_s1 | todo, running |" in capsys.readouterr().out
        assert cli.main(["paper", "--study", str(path)]) == 0
        assert "clean/baseline_s1: another runner is on it" in capsys.readouterr().out
        assert t.status() == "todo" and not (t.out / "train.log").exists()
    finally:
        held.close()
    assert not paper._running(t)


def test_a_condition_sizes_its_own_test_sample_and_a_bad_one_is_named(tmp_path, sample_path):
    import yaml

    path = _study(tmp_path, sample_path)
    d = yaml.safe_load(path.read_text())
    d["conditions"]["clean"]["test"] = {"shards": {"first": 7, "count": 2, "jets": 50}}
    path.write_text(json.dumps(d))
    study = paper.load_study(path)
    assert [p.name for p, _ in paper.shards(study, "clean", "test")] == ["shard_s7.h5",
                                                                        "shard_s8.h5"]
    assert paper.study_trainings(study)[0].tests == ("shard_s7.h5", "shard_s8.h5")
    # groups of shards with their own options: balanced ones, then light jets alone
    d["conditions"]["clean"]["test"] = {"shards": [
        {"first": 7, "count": 1, "jets": 50},
        {"first": 30, "count": 2, "jets": 40, "generate": {"only": "light"}}]}
    path.write_text(json.dumps(d))
    te = paper.shards(paper.load_study(path), "clean", "test")
    assert [p.name for p, _ in te] == ["shard_s7.h5", "shard_s30.h5", "shard_s31.h5"]
    assert "only" not in te[0][1] and te[1][1]["only"] == "light"
    assert (te[2][1]["n_jets"], te[2][1]["seed"]) == (40, 31)
    assert paper.generation_config(te[1][1]).only == "light"
    d["conditions"]["clean"]["test"]["shards"][1]["first"] = 7  # seed 7 twice: one file
    path.write_text(json.dumps(d))
    with pytest.raises(paper.StudyError, match="overlap"):
        paper.load_study(path)
    d["conditions"]["clean"]["test"]["shards"][1] = {"first": 30, "count": 2}  # no jets
    path.write_text(json.dumps(d))
    with pytest.raises(paper.StudyError, match="needs integer 'first'"):
        paper.load_study(path)
    d["conditions"]["clean"]["test"] = {"jets": 50}  # no seed
    path.write_text(json.dumps(d))
    with pytest.raises(paper.StudyError, match=r"conditions.clean: data.test needs 'jets' and "
                                               r"'seed'"):
        paper.load_study(path)


def test_a_condition_trains_its_own_number_of_seeds(tmp_path, sample_path):
    """``conditions.<name>.seeds`` replaces the study's ``seeds`` in that condition only (a
    condition whose seed spread needs more trainings); runs with their own seeds keep them;
    the smoke test still trains one seed."""
    path = _study(tmp_path, sample_path)
    d = json.loads(path.read_text())
    d["conditions"]["other"] = {"generate": {}, "seeds": 3}
    d["seeds"] = 2
    d["runs"].append({"name": "ref", "config": "baseline", "seeds": [1]})
    path.write_text(json.dumps(d))
    study = paper.load_study(path)
    names = [(t.condition, t.name) for t in paper.study_trainings(study)]
    assert [n for c, n in names if c == "clean"] == ["baseline_s1", "baseline_s2", "ref_s1"]
    assert [n for c, n in names if c == "other"] == ["baseline_s1", "baseline_s2",
                                                     "baseline_s3", "ref_s1"]
    smoke = paper.smoke_study(study)
    assert {t.name for t in paper.study_trainings(smoke)} == {"baseline_s1", "ref_s1"}
    for bad in (0, "4", True):
        d["conditions"]["other"]["seeds"] = bad
        path.write_text(json.dumps(d))
        with pytest.raises(paper.StudyError, match=r"conditions\.other\.seeds must be a "
                                                   "positive integer"):
            paper.load_study(path)
