"""All benchmarks in one run (``nox -s bench``): a JSON file, a markdown table and PNG plots.

Usage: python benchmarks/run.py [--quick] [--only TOPIC ...] [--out DIR] [--machine NAME]
       [--docs]

Every ``benchmarks/bench_<topic>.py`` exposes ``run(quick: bool = False) -> dict`` returning
``{"title": str, "rows": [dict, ...], "notes": [str, ...]}`` and optionally ``"ratios":
{name: float}`` (its headline ratios), plus ``main(argv)`` to run it alone. This script runs
the topics in :data:`TOPICS` order (then any other ``bench_*.py``), a missing topic or one
that fails is skipped with a note, and writes to ``--out`` (default ``benchmarks/results``):

* ``<machine>.json``: the machine (CPU model, cores, RAM, load, Python and package versions,
  CUDA device if any), each topic's result and the headline ratios;
* ``<machine>.md``: the same as markdown tables;
* ``<machine>-throughput.png``: jets/s vs number of jets, one line per backend (rows with
  ``n_jets`` and ``jets_per_s``, ``forward_jets_per_s`` or ``fwd_bwd_jets_per_s``), and
  ``<machine>-n_iter.png``: time and memory vs ``n_iter`` for each differentiation
  ``mode`` or ``method`` (rows with ``n_iter`` and ``mode``: ``seconds``, ``memory_bytes``).

Rows may carry a ``"table"`` key: each distinct value becomes its own markdown table.

With ``--only``, the topics not run are kept from an existing ``<machine>.json`` (each
topic carries its own date). ``--docs`` rewrites ``docs/benchmarks.md`` from every
``<machine>.json`` in ``--out`` and copies the plots to ``docs/img/benchmarks/``.
Machines are shared and noisy: the ratios within one run are the headline.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Known topics, in run order; other bench_*.py files run after them.
TOPICS = ("fit", "gradients", "generate", "training")
#: Headline ratios are the ones whose name contains one of these (case-insensitive).
HEADLINE = ("scipy", "backward", "forward", "fwd", "unrolled/implicit", "memory n_iter",
            "jax/numpy", "torch/numpy", "ndive")
#: Throughput columns plotted against ``n_jets`` (line-label suffix).
THROUGHPUT = {"jets_per_s": "", "forward_jets_per_s": " forward",
              "fwd_bwd_jets_per_s": " fwd+bwd"}
#: Columns plotted against ``n_iter`` for rows with a ``method`` or ``mode``.
N_ITER_METRICS = ("seconds", "jets_per_s", "memory_bytes", "peak_mb", "peak_memory_mb")


# --------------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _cuda() -> list[str]:
    """Names of the CUDA devices PyTorch sees (empty without CUDA or without torch)."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """CPU model, cores, RAM, load average, versions, CUDA devices, date, git commit."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": None if _ram_gib() is None else round(_ram_gib(), 1),
        "load_average_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {m: _version(m) for m in ("numpy", "scipy", "jax", "jaxlib", "torch",
                                              "vertexfit", "ndive-models", "pythia8mc",
                                              "fastjet")},
        "cuda": _cuda(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


def machine_name(info: dict) -> str:
    """A file-name slug like ``amd-epyc-2c`` or ``intel-xeon-...-16c-nvidia-h100``."""
    cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\d+-core", "", info["cpu"].lower())
    words = re.findall(r"[a-z0-9]+", cpu)[:4]
    name = "-".join(words) or "cpu"
    name += f"-{info['usable_cores']}c"
    if info["cuda"]:
        name += "-" + "-".join(re.findall(r"[a-z0-9]+", info["cuda"][0].lower())[:3])
    return name


# --------------------------------------------------------------------------------------------
# discovery and running
# --------------------------------------------------------------------------------------------
def discover(bench_dir: Path = HERE) -> dict[str, Path]:
    """``{topic: path}`` of the ``bench_<topic>.py`` files, known topics first."""
    found = {p.stem[len("bench_"):]: p for p in sorted(bench_dir.glob("bench_*.py"))}
    ordered = {t: found[t] for t in TOPICS if t in found}
    ordered.update({t: p for t, p in found.items() if t not in ordered})
    return ordered


def _load(topic: str, path: Path):
    if str(path.parent) not in sys.path:  # the topics import their shared _common.py
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_bench_{topic}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_topic(topic: str, path: Path, quick: bool) -> dict:
    """Import ``path`` and call its ``run(quick)``; a failure becomes a result with a note."""
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    try:
        module = _load(topic, path)
        if not callable(getattr(module, "run", None)):
            raise TypeError(f"{path.name} has no run(quick=False) function")
        result = module.run(quick=quick)
        if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
            raise TypeError(f"{path.name}: run() must return a dict with a 'rows' list, got "
                            f"{type(result).__name__}")
        result = dict(result)
        result.setdefault("title", topic)
        result["notes"] = list(result.get("notes", []))
        result["status"] = "ok"
    except Exception as e:  # one broken benchmark must not lose the others' numbers
        traceback.print_exc()
        result = {"title": topic, "rows": [], "status": "failed",
                  "notes": [f"failed: {type(e).__name__}: {e}"]}
    result["date"] = started
    result["load_average"] = load
    result["quick"] = quick
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def headline(topics: dict) -> dict:
    """The headline ratios: every topic's ``ratios`` whose name matches :data:`HEADLINE`."""
    out = {}
    for topic, res in topics.items():
        for name, value in (res.get("ratios") or {}).items():
            if any(h in name.lower() for h in HEADLINE):
                out[f"{topic}: {name}"] = value
    return out


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or a == 0:
            return f"{v:.3f}"
        return f"{v:.2e}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":")).replace("|", "/")
    return str(v).replace("|", "/")


def table(rows: list[dict]) -> list[str]:
    """Markdown table of ``rows`` (the columns: every key, in order of first appearance)."""
    if not rows:
        return ["(no rows)"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return lines


def machine_lines(info: dict) -> list[str]:
    v = {k: x for k, x in info["versions"].items() if x}
    gpu = ", ".join(info["cuda"]) if info["cuda"] else "none"
    return [
        (f"- CPU: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"RAM {info['ram_gib']} GiB, load average {info['load_average_start']} at the start, "
        f"{info.get('load_average_end')} at the end"),
        f"- CUDA devices: {gpu}",
        f"- {info['platform']}, Python {info['python']}; "
        + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- date {info['date']}, git commit {info['git_commit']}",
    ]


def markdown(result: dict, plots: list[str]) -> str:
    name = result["machine_name"]
    lines = [f"# Benchmarks on `{name}`", "", *machine_lines(result["machine"]), ""]
    if result["headline"]:
        lines += ["## Headline ratios", "", "| ratio | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(float(v))} |" for k, v in result["headline"].items()]
        lines.append("")
    for note in result["notes"]:
        lines.append(f"- {note}")
    for topic, res in result["topics"].items():
        lines += ["", f"## {res.get('title', topic)} (`bench_{topic}.py`)", "",
                  (f"{res['status']}, {res['date']}, {'quick' if res['quick'] else 'full'}, "
                  f"{res['seconds']} s, load average {res.get('load_average')} at the start"),
                  ""]
        groups = {}
        for r in res["rows"]:
            groups.setdefault(r.get("table"), []).append(r)
        for name_, rows in groups.items():
            if name_ is not None:
                lines += [f"**{name_}**", ""]
            lines += table([{k: v for k, v in r.items() if k != "table"} for r in rows])
            lines.append("")
        if res.get("ratios"):
            lines += ["", "Ratios: " + ", ".join(f"{k} = {_cell(float(v))}"
                                                 for k, v in res["ratios"].items())]
        lines += [""] + [f"- {n}" for n in res["notes"]]
    for p in plots:
        lines += ["", f"![{p}]({p})"]
    return "\n".join(lines) + "\n"


def _label(row: dict) -> str:
    keys = ("backend", "method", "mode", "dtype", "pass", "device", "n_tracks", "model")
    return " ".join(str(row[k]) + (" tracks" if k == "n_tracks" else "") for k in keys
                    if k in row)


def plot(result: dict, out: Path) -> list[str]:
    """The PNG plots (file names); nothing if matplotlib is missing or nothing to plot."""
    if importlib.util.find_spec("matplotlib") is None:
        result["notes"].append("no plots: matplotlib is not installed")
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = result["machine_name"]
    files = []
    thr = {t: [r for r in res["rows"] if "n_jets" in r and r.get("table") in (None, "throughput")
               and not ("method" in r or "mode" in r) and any(k in r for k in THROUGHPUT)]
           for t, res in result["topics"].items()}
    thr = {t: rows for t, rows in thr.items() if rows}
    if thr:
        fig, axes = plt.subplots(1, len(thr), figsize=(6.5 * len(thr), 4.5), squeeze=False)
        for ax, (topic, rows) in zip(axes[0], thr.items()):
            lines = {}
            for r in rows:
                for key, suffix in THROUGHPUT.items():
                    if isinstance(r.get(key), (int, float)):
                        lines.setdefault(_label(r) + suffix, []).append((r["n_jets"], r[key]))
            for label, pts in lines.items():
                pts.sort()
                ax.plot(*zip(*pts), "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel="jets per call", ylabel="jets / s",
                   title=result["topics"][topic].get("title", topic))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(name)
        fig.tight_layout()
        files.append(f"{name}-throughput.png")
        fig.savefig(out / files[-1], dpi=90)
        plt.close(fig)
    rows = [r for res in result["topics"].values() for r in res["rows"]
            if "n_iter" in r and ("method" in r or "mode" in r)]
    metrics = [m for m in N_ITER_METRICS
               if any(isinstance(r.get(m), (int, float)) and r[m] > 0 for r in rows)]
    if rows and metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            lines = {}
            for r in rows:
                if isinstance(r.get(m), (int, float)) and r[m] > 0:
                    lines.setdefault(_label(r), []).append((r["n_iter"], r[m]))
            for label, pts in lines.items():
                pts.sort()
                ax.plot(*zip(*pts), "o-", label=label)
            ax.set(xlabel="n_iter (fit iterations)", ylabel=m, xscale="log", yscale="log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{name}: implicit vs unrolled differentiation")
        fig.tight_layout()
        files.append(f"{name}-n_iter.png")
        fig.savefig(out / files[-1], dpi=90)
        plt.close(fig)
    return files


def write_docs(results_dir: Path, docs: Path = ROOT / "docs") -> Path:
    """Rewrite ``docs/benchmarks.md`` from every ``<machine>.json`` in ``results_dir``."""
    img = docs / "img" / "benchmarks"
    img.mkdir(parents=True, exist_ok=True)
    results = []
    for p in sorted(results_dir.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if "machine_name" in r and "topics" in r:
            results.append(r)
    results.sort(key=lambda r: r["machine"]["date"], reverse=True)
    lines = ["# Benchmarks", "",
             ("Measured by `nox -s bench` (`python benchmarks/run.py`), which runs every "
             "`benchmarks/bench_*.py` and writes `benchmarks/results/<machine>.json`, a "
             "markdown table and PNG plots. Machines are shared and noisy: the ratios within "
             "one run (speed-up over SciPy, backward/forward, JAX/NumPy) are the headline. "
             "Below: the latest committed results, one section per machine, newest first."), ""]
    if not results:
        lines.append("No results are committed yet.")
    for r in results:
        body = markdown(r, []).splitlines()
        body[0] = "#" + body[0]  # one level down
        body = [("#" + ln if ln.startswith("## ") else ln) for ln in body]
        lines += body
        for f in r.get("plots", []):
            src = results_dir / f
            if src.exists():
                shutil.copy2(src, img / f)
                lines += ["", f"![{f}](img/benchmarks/{f})"]
        lines.append("")
    path = docs / "benchmarks.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="each topic's quick mode (minutes)")
    p.add_argument("--only", nargs="+", metavar="TOPIC", help="run only these topics")
    p.add_argument("--out", default=str(HERE / "results"), help="output directory")
    p.add_argument("--machine", help="machine name in the file names (default: from the CPU)")
    p.add_argument("--bench-dir", default=str(HERE), help=argparse.SUPPRESS)
    p.add_argument("--docs", action="store_true",
                   help="also rewrite docs/benchmarks.md from the results in --out")
    args = p.parse_args(argv)

    available = discover(Path(args.bench_dir))
    if args.only:
        unknown = [t for t in args.only if t not in available]
        if unknown:
            p.error(f"no benchmarks/bench_<topic>.py for {', '.join(unknown)}; available: "
                    f"{', '.join(available) or 'none'}")
    todo = [t for t in available if not args.only or t in args.only]
    info = machine_info()
    name = args.machine or machine_name(info)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    previous = {}
    if args.only and json_path.exists():
        previous = json.loads(json_path.read_text()).get("topics", {})

    notes = [f"topic {t}: no benchmarks/bench_{t}.py yet, skipped" for t in TOPICS
             if t not in available and not args.only]
    topics = dict(previous)
    for t in todo:
        print(f"=== {t} ({available[t].name}) ===", flush=True)
        topics[t] = run_topic(t, available[t], args.quick)
        print(f"    {topics[t]['status']} in {topics[t]['seconds']} s, "
              f"{len(topics[t]['rows'])} rows", flush=True)
    topics = {t: topics[t] for t in [*available, *topics] if t in topics}
    if previous:
        kept = [t for t in topics if t not in todo]
        if kept:
            notes.append(f"kept from the previous run: {', '.join(kept)} (see their dates)")
    info["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    busy = max([info["load_average_start"] or 0, info["load_average_end"] or 0]
               + [r.get("load_average") or 0 for r in topics.values()])
    if busy > info["usable_cores"]:
        notes.append(f"the machine was busy (load average up to {busy:.1f} on "
                     f"{info['usable_cores']} cores): absolute numbers are pessimistic and "
                     "even the ratios are noisier than usual")
    result = {"machine_name": name, "machine": info, "topics": topics,
              "headline": headline(topics), "notes": notes}
    result["plots"] = plot(result, out)
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result, result["plots"])
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"written: {json_path}, {out / (name + '.md')}"
          + "".join(f", {out / f}" for f in result["plots"]))
    if args.docs:
        print(f"written: {write_docs(out)}")
    failed = [t for t in todo if topics[t]["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
