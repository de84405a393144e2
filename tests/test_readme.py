"""The README's library example runs and does what it says; its Compose commands exist in
Compose v2 and v1 (and ``deploy/compose`` picks the one installed)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_library_example_trains() -> None:
    text = (ROOT / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    out = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), namespace)
    model, ds, w = namespace["model"], namespace["ds"], namespace["w"]
    metrics = model.evaluate(w, ds.X_test, ds.y_test)  # type: ignore[attr-defined]
    assert metrics["accuracy"] > 0.95
    b_v, agg = namespace["b_v"], namespace["agg"]
    assert 0 < b_v <= model.dim and agg.shape == (b_v,)  # type: ignore[attr-defined, union-attr]
    assert "median" in out.getvalue()


# --- the Compose commands: v2 (`docker compose`) and v1 (`docker-compose`, Debian's 1.29) ---

COMPOSE_DOCS = ("README.md", "docs/operations.md")


def _v1_commands(doc: str) -> list[list[str]]:
    """Every ``docker-compose ...`` command written in ``doc`` (code blocks and inline code),
    as argv after ``docker-compose``; package lists (``apt-get install ... docker-compose``)
    are not commands."""
    text = (ROOT / doc).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        for m in re.finditer(r"docker-compose((?:[ \t]+[^\s`&|;)\"]+)+)", line):
            if "install" in line[: m.start()]:
                continue
            out.append(shlex.split(m.group(1)))
    return out


def _help(*argv: str) -> str:
    res = subprocess.run(["docker-compose", *argv, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_docs_give_a_compose_v1_form_of_every_compose_v2_command() -> None:
    for doc in COMPOSE_DOCS:
        text = (ROOT / doc).read_text()
        v2 = set(re.findall(r"docker compose ([a-z]+)", text))
        v1 = {argv[0] for argv in _v1_commands(doc) if argv}
        assert v2, f"{doc}: no docker compose command found (did the section move?)"
        # cp does not exist in v1: docker's own cp on the service's container stands for it
        assert "cp" not in v1
        missing = v2 - v1 - {"cp", "version"}  # `docker compose version`: the "is it v2?" check
        assert not missing, f"{doc}: no docker-compose form of docker compose {sorted(missing)}"
        if "cp" in v2:
            assert 'docker cp "$(docker-compose ps -q server)":/data/rounds.jsonl' in text, doc
        assert "deploy/compose" in text, doc


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed "
                    "(apt-get install docker-compose; .ci/run does)")  # fmt: skip
def test_every_documented_docker_compose_command_exists_in_compose_v1() -> None:
    """Each ``docker-compose`` command in the docs: its subcommand and every flag are in
    this docker-compose's own --help (Debian 12: 1.29.2, the version the docs install)."""
    top = _help()
    commands = set(re.findall(r"^  ([a-z]+)\s{2,}", top.split("Commands:")[1], re.M))
    assert {"up", "down", "ps", "logs", "build"} <= commands and "cp" not in commands, commands
    seen = 0
    for doc in COMPOSE_DOCS:
        for argv in _v1_commands(doc):
            args = list(argv)
            while args and args[0] in ("-f", "-p", "--env-file", "--project-name", "--file"):
                args = args[2:]
            assert args and args[0] in commands, f"{doc}: docker-compose {' '.join(argv)}: no such command"
            sub = _help(args[0])
            for tok in args[1:]:
                if tok == "--":
                    break
                if tok.startswith("-"):
                    flag = tok.split("=")[0]
                    assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", sub, re.M), (
                        f"{doc}: docker-compose {' '.join(argv)}: {args[0]} has no {flag}"
                    )
            seen += 1
    assert seen >= 8, seen


def _fake_bin(tmp_path: Path, *, v2: bool) -> tuple[Path, Path]:
    """Stand-ins for ``docker`` and ``docker-compose`` that log their argv; ``docker compose
    version`` answers only when ``v2``; ``docker-compose ps -q server`` prints a container id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    (bin_dir / "docker").write_text(
        f'#!/bin/sh\necho "docker $*" >> {str(log)!r}\n'
        f'if [ "$1" = compose ] && [ "$2" = version ]; then exit {0 if v2 else 1}; fi\n'
    )
    (bin_dir / "docker-compose").write_text(
        f'#!/bin/sh\necho "docker-compose $*" >> {str(log)!r}\n'
        'if [ "$1 $2 $3" = "ps -q server" ]; then echo c0ffee42; fi\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def _wrapper(path: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {"PATH": path, "HOME": str(ROOT), **(env or {})}
    argv_ = [str(ROOT / "deploy" / "compose"), *argv]
    return subprocess.run(argv_, capture_output=True, text=True, timeout=60, env=full, cwd=ROOT)


def test_deploy_compose_runs_v2_when_docker_has_the_plugin(tmp_path: Path) -> None:
    bin_dir, log = _fake_bin(tmp_path, v2=True)
    path = f"{bin_dir}:/usr/bin:/bin"
    assert _wrapper(path, "up", "--build", "-d").returncode == 0
    assert _wrapper(path, "cp", "server:/data/rounds.jsonl", "runs/compose.jsonl").returncode == 0
    assert log.read_text().splitlines() == [
        "docker compose version",
        "docker compose up --build -d",
        "docker compose version",
        "docker compose cp server:/data/rounds.jsonl runs/compose.jsonl",
    ]
    # v1 chosen on purpose, with both installed
    log.unlink()
    assert _wrapper(path, "down", "-v", env={"HGO_COMPOSE": "v1"}).returncode == 0
    assert log.read_text().splitlines() == ["docker-compose down -v"]


def test_deploy_compose_falls_back_to_v1_and_translates_cp(tmp_path: Path) -> None:
    bin_dir, log = _fake_bin(tmp_path, v2=False)
    path = f"{bin_dir}:/usr/bin:/bin"
    assert _wrapper(path, "up", "--build", "-d").returncode == 0
    res = _wrapper(path, "cp", "server:/data/rounds.jsonl", "runs/compose.jsonl")
    assert res.returncode == 0, res.stderr
    res = _wrapper(path, "cp", "./model.npz", "server:/data/model.npz")
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == [
        "docker compose version",
        "docker-compose up --build -d",
        "docker compose version",
        "docker-compose ps -q server",
        "docker cp c0ffee42:/data/rounds.jsonl runs/compose.jsonl",
        "docker compose version",
        "docker-compose ps -q server",
        "docker cp ./model.npz c0ffee42:/data/model.npz",
    ]
    # a service without a container: said, and nothing copied
    res = _wrapper(path, "cp", "grafana:/etc/x", "x")
    assert res.returncode == 1 and "service 'grafana' has no container" in res.stderr, res.stderr
    assert "docker cp" not in log.read_text().splitlines()[-1]


def test_deploy_compose_without_any_compose_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _wrapper(str(empty), "up", "-d")
    assert res.returncode == 127
    assert "neither 'docker compose' (Compose v2) nor 'docker-compose' (v1)" in res.stderr
    assert "apt-get install docker-compose" in res.stderr
    res = _wrapper(str(empty), "up", env={"HGO_COMPOSE": "v3"})
    assert res.returncode == 2 and "HGO_COMPOSE must be v1 or v2, got 'v3'" in res.stderr
