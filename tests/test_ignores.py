"""What must never be committed or sent to the Docker daemon: ``.env`` (it holds
``HGO_TOKEN``), the run outputs ``runs/`` and ``results/`` (hgo-experiment's default,
153 MB of build context after one experiment, issue 24), the virtualenv.

Git is asked itself (``git check-ignore``); the build context is checked with Docker's
``.dockerignore`` rules (moby's patternmatcher: paths relative to the context, ``*`` within
one path element, ``**`` across them, a pattern that matches a directory excludes what is
under it, later ``!`` patterns re-include, the last match wins).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SECRET_OR_OUTPUT = [
    ".env", ".env.local", "results/fig5-sim/run.json", "runs/demo/summary.json", ".venv/bin/python",
]  # fmt: skip
KEPT = [".env.example", "pyproject.toml", "README.md", "hgo_common/__init__.py", "docker-compose.yml"]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_ignores_the_token_file_and_run_outputs() -> None:
    res = subprocess.run(
        ["git", "check-ignore", "--no-index", "-v", *SECRET_OR_OUTPUT, *KEPT],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode in (0, 1), res.stderr
    # -v prints "source:line:pattern<TAB>path"; a path re-included by "!" shows a "!" pattern
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    ignored = {path for source, path in rows if not source.split(":", 2)[2].startswith("!")}
    assert ignored == set(SECRET_OR_OUTPUT), res.stdout


def _pattern(p: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(p):
        if p.startswith("**", i):
            out += ".*"
            i += 2
            if p.startswith("/", i):  # "**/x" also matches "x"
                out = out[:-2] + "(?:.*/)?"
                i += 1
        elif p[i] == "*":
            out += "[^/]*"
            i += 1
        elif p[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(p[i])
            i += 1
    return re.compile(out + "$")


def _docker_excluded(path: str) -> bool:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        rules.append((neg, _pattern(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # the path and its parents
    excluded = False
    for neg, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not neg
    return excluded


def test_the_docker_build_context_leaves_out_the_token_file_and_run_outputs() -> None:
    assert [p for p in SECRET_OR_OUTPUT if not _docker_excluded(p)] == []
    # what deploy/Dockerfile copies is still there
    for p in ["pyproject.toml", "README.md", "LICENSE", "hgo_common/models/export.py", "hgo_server/cli.py"]:
        assert not _docker_excluded(p), p
    # the matcher itself: a wildcard stays within one path element, ** crosses them
    assert _pattern("**/*.pyc").match("a/b/c.pyc") and _pattern("**/*.pyc").match("c.pyc")
    assert not _pattern("*.pyc").match("a/c.pyc")
