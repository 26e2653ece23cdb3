"""benchmarks/run.py: discovery, missing and failing topics, outputs (with fake benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FIT = '''
def run(quick=False):
    rows = [{"backend": b, "dtype": "float64", "n_jets": n, "jets_per_s": s * n ** 0.1}
            for b, s in (("numpy", 100.0), ("jax", 300.0)) for n in (100, 1000)]
    rows.append({"backend": "scipy-reference", "n_jets": 10, "jets_per_s": 1.0})
    return {"title": "fit", "rows": rows, "notes": ["quick" if quick else "full"],
            "ratios": {"jax/scipy-reference": 600.0, "jax/numpy": 3.0, "other": 1.0}}
'''
GRADIENTS = '''
def run(quick=False):
    rows = [{"table": "throughput", "backend": "jax", "n_jets": n, "forward_jets_per_s": 10.0 * n,
             "fwd_bwd_jets_per_s": 5.0 * n} for n in (100, 1000)]
    rows += [{"table": "implicit_vs_unrolled", "backend": "torch", "n_jets": 100, "mode": m,
              "n_iter": k, "seconds": 0.01 * k if m == "unrolled" else 0.01,
              "memory_bytes": 5e6 * k if m == "unrolled" else 5e6, "jets_per_s": 1.0}
             for m in ("implicit", "unrolled") for k in (1, 10, 100)]
    return {"title": "gradients", "rows": rows, "notes": [],
            "ratios": {"jax fwd_bwd/fwd": 2.0}}
'''
BROKEN = '''
def run(quick=False):
    raise RuntimeError("boom")
'''


@pytest.fixture
def runner():
    spec = importlib.util.spec_from_file_location("_bench_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "bench_fit.py").write_text(FIT)
    (d / "bench_gradients.py").write_text(GRADIENTS)
    (d / "bench_zbroken.py").write_text(BROKEN)
    return d


def test_runs_all_topics_and_writes_outputs(runner, bench_dir, tmp_path, capsys):
    out = tmp_path / "results"
    rc = runner.main(["--quick", "--out", str(out), "--machine", "m1",
                      "--bench-dir", str(bench_dir)])
    assert rc == 1  # one topic failed
    res = json.loads((out / "m1.json").read_text())
    assert list(res["topics"]) == ["fit", "gradients", "zbroken"]
    assert res["topics"]["fit"]["status"] == "ok" and res["topics"]["fit"]["quick"] is True
    assert res["topics"]["fit"]["notes"] == ["quick"]
    assert res["topics"]["zbroken"]["status"] == "failed"
    assert "RuntimeError: boom" in res["topics"]["zbroken"]["notes"][0]
    # missing known topics are named
    assert any("bench_generate.py" in n for n in res["notes"])
    assert any("bench_training.py" in n for n in res["notes"])
    # headline: matching ratios only
    assert res["headline"] == {"fit: jax/scipy-reference": 600.0, "fit: jax/numpy": 3.0,
                               "gradients: jax fwd_bwd/fwd": 2.0}
    m = res["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["versions"]["numpy"]
    md = (out / "m1.md").read_text()
    assert "| backend | dtype | n_jets | jets_per_s |" in md and "Headline ratios" in md
    # one markdown table per "table" value, without the "table" column
    assert "**throughput**" in md and "**implicit_vs_unrolled**" in md
    assert "| backend | n_jets | mode | n_iter | seconds | memory_bytes | jets_per_s |" in md
    if importlib.util.find_spec("matplotlib"):
        assert res["plots"] == ["m1-throughput.png", "m1-n_iter.png"]
        assert all((out / f).stat().st_size > 1000 for f in res["plots"])


def test_only_keeps_the_other_topics_and_rejects_unknown(runner, bench_dir, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["--out", str(out), "--machine", "m2", "--bench-dir", str(bench_dir)]
    runner.main(args)
    first = json.loads((out / "m2.json").read_text())
    assert runner.main([*args, "--only", "gradients"]) == 0
    second = json.loads((out / "m2.json").read_text())
    assert second["topics"]["fit"] == first["topics"]["fit"]
    assert second["topics"]["gradients"]["quick"] is False
    assert any("kept from the previous run" in n for n in second["notes"])
    with pytest.raises(SystemExit):
        runner.main([*args, "--only", "nosuch"])
    assert "available: fit, gradients, zbroken" in capsys.readouterr().err


def test_docs_page_from_results(runner, bench_dir, tmp_path):
    out = tmp_path / "results"
    runner.main(["--out", str(out), "--machine", "m3", "--bench-dir", str(bench_dir),
                 "--only", "fit"])
    docs = tmp_path / "docs"
    page = runner.write_docs(out, docs)
    text = page.read_text()
    assert "## Benchmarks on `m3`" in text and "jax/numpy" in text
    for f in json.loads((out / "m3.json").read_text())["plots"]:
        assert (docs / "img" / "benchmarks" / f).exists() and f"img/benchmarks/{f}" in text


def test_machine_name_is_a_slug(runner):
    info = {"cpu": "Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz", "usable_cores": 16,
            "cuda": ["NVIDIA H100 80GB HBM3"]}
    assert runner.machine_name(info) == "intel-xeon-platinum-8480c-16c-nvidia-h100-80gb"
    assert runner.machine_name({"cpu": "AMD EPYC", "usable_cores": 2, "cuda": []}) == "amd-epyc-2c"
