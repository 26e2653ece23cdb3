"""Every ```python block of README.md and docs/**/*.md runs, so no example can rot.

The blocks of one file run in order in one namespace (a tutorial builds up), in a temporary
working directory. A block is excluded when its fence says ```python skip-test or the line
before the fence is ``<!-- no-test -->`` (keep that rare: say why next to it). A block that
uses event generation (``ndive_models.generate``) skips the rest of its file when the
``ndive-models[generate]`` extra (Pythia, fastjet, awkward) is not installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
NO_TEST = "<!-- no-test -->"
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NEEDS_GENERATE = ("ndive_models.generate", "GenerationConfig")
_GENERATE_MODULES = ("pythia8mc", "fastjet", "awkward")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of the runnable ```python blocks of a markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip().split()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        if info and info[0] == "python" and "skip-test" not in info[1:] and prev != NO_TEST:
            blocks.append((start + 1, "\n".join(body) + "\n"))
    return blocks


def test_parser_finds_blocks_and_honours_the_markers():
    text = "\n".join([
        "# t", "```python", "a = 1", "```", "```python skip-test", "b = 2", "```",
        NO_TEST, "", "```python", "c = 3", "```", "```bash", "echo", "```",
        "- item", "  ```python", "  d = 4", "  ```",
    ])
    assert python_blocks(text) == [(2, "a = 1\n"), (17, "d = 4\n")]


def test_the_tutorials_have_examples():
    """Guards the collection itself: a broken glob or parser would run nothing."""
    names = {f.relative_to(ROOT).as_posix() for f in FILES if python_blocks(f.read_text())}
    for page in ("README.md", "docs/tutorials/numpy.md", "docs/tutorials/jax.md",
                 "docs/tutorials/pytorch.md"):
        assert page in names


def _generate_extra_missing() -> bool:
    return any(importlib.util.find_spec(m) is None for m in _GENERATE_MODULES)


@pytest.fixture
def _restore_jax_x64():
    """Examples may enable JAX x64 (an application's choice); put it back afterwards."""
    jax = pytest.importorskip("jax") if importlib.util.find_spec("jax") else None
    before = jax.config.jax_enable_x64 if jax else None
    yield
    if jax is not None:
        jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize(
    "path", [f for f in FILES if python_blocks(f.read_text())],
    ids=lambda f: f.relative_to(ROOT).as_posix(),
)
def test_examples_run(path, tmp_path, monkeypatch, _restore_jax_x64):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__docs__"}
    for line, code in python_blocks(path.read_text()):
        if any(s in code for s in _NEEDS_GENERATE) and _generate_extra_missing():
            pytest.skip(f"{path.name}:{line} and later need pip install 'ndive-models[generate]'")
        try:
            exec(compile(code, f"{path}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the example at {path.relative_to(ROOT)} line {line} "
                                 f"failed: {type(e).__name__}: {e}") from e


def test_nav_hook_leaves_out_missing_pages(tmp_path):
    spec = importlib.util.spec_from_file_location("_nav_hook", ROOT / "docs" / "_hooks" / "nav.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    (tmp_path / "a.md").write_text("# a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# b")
    nav = [{"A": "a.md"}, {"Missing": "nope.md"}, "a.md",
           {"Section": [{"B": "sub/b.md"}, {"C": "sub/c.md"}]},
           {"Empty": [{"D": "d.md"}]}, {"Out": "https://example.org"}]
    config = hook.on_config({"nav": nav, "docs_dir": str(tmp_path)})
    assert config["nav"] == [{"A": "a.md"}, "a.md", {"Section": [{"B": "sub/b.md"}]},
                             {"Out": "https://example.org"}]
