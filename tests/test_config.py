"""hgo_server.config: flags, TOML, durations, and errors that name the value and the range."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hgo_common import rounds
from hgo_common.spec import Deadline
from hgo_server.config import (
    ConfigError,
    ServerConfig,
    check_paths,
    load_toml,
    parse_args,
    parse_duration_ms,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("60", 60.0), (60, 60.0), (2.5, 2.5), ("250ms", 250.0), ("2s", 2000.0), ("1.5s", 1500.0),
     ("2min", 120_000.0), (" 10 ms ", 10.0), ("inf", math.inf), ("Infinity", math.inf), ("1e3", 1000.0)],
)  # fmt: skip
def test_duration_parsing(text: object, ms: float) -> None:
    assert parse_duration_ms(text, "tau") == ms


@pytest.mark.parametrize("bad", ["-5", -5, "5h", "fast", "", "nan", True, [1]])
def test_bad_durations_name_the_flag_and_value(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration_ms(bad, "tau")
    assert "--tau" in str(info.value) and repr(bad) in str(info.value)


def test_defaults_resolve() -> None:
    cfg = parse_args([])
    assert (cfg.q, cfg.tau_ms, cfg.rule, cfg.algorithm, cfg.max_chunk_values) == (
        10,
        60.0,
        "average",
        "hgo",
        16384,
    )
    assert cfg.quorum == rounds.default_quorum(10, "average", 0)
    assert cfg.min_workers == cfg.q and cfg.num_shards == cfg.min_workers
    assert cfg.sgd_timeout == 60_000.0 and cfg.port == 50051


def test_dependent_defaults_follow_the_flags() -> None:
    cfg = parse_args(["--q", "7", "--rule", "median", "--f", "2", "--min-workers", "9"])
    assert cfg.quorum == rounds.default_quorum(7, "median", 2) == 5
    assert (cfg.min_workers, cfg.num_shards) == (9, 9)
    assert parse_args(["--q", "4", "--num-shards", "2"]).num_shards == 2


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--tau", "-5"], ["--tau", "-5"]),
        (["--tau", "0"], ["--tau", "> 0", "0"]),
        (["--q", "0"], ["--q", ">= 1", "0"]),
        (["--rule", "nope"], ["--rule", "'nope'", "median"]),
        (["--q", "3", "--v", "4"], ["--v", "[1, q=3]", "4"]),
        (["--v", "0"], ["--v", "0"]),
        (["--f", "-1"], ["--f", ">= 0", "-1"]),
        (["--q", "4", "--v", "2", "--rule", "median", "--f", "1"], ["needs at least 3", "quorum v is 2"]),
        (["--lr", "0"], ["--lr", "positive", "0"]),
        (["--lr", "abc"], ["--lr", "'abc'"]),
        (["--algorithm", "adam"], ["--algorithm", "'adam'", "sgd"]),
        (["--lr-schedule", "cosine"], ["--lr-schedule", "'cosine'", "inv-sqrt-block"]),
        (["--port", "70000"], ["--port", "65535", "70000"]),
        (["--q", "2.5"], ["--q", "'2.5'"]),
        (["--rounds", "0"], ["--rounds", ">= 1", "0"]),
        (["--max-chunk-values", "0"], ["--max-chunk-values", "0"]),
        (["--max-chunk-values", "20000000"], ["--max-chunk-values", "--max-message-mb 64", "20000000"]),
        (["--hidden", "30,x"], ["--hidden", "30,x"]),
        (["--hidden", "0"], ["--hidden", "[0]"]),
        (["--model", "resnet"], ["--model", "'resnet'", "logistic"]),
        (["--dataset", "imagenet"], ["--dataset", "'imagenet'", "breast-cancer"]),
        (["--partition", "bogus:3"], ["--partition", "bogus"]),
        (["--sgd-timeout", "0"], ["--sgd-timeout", "0"]),
        (["--heartbeat-ms", "1"], ["--heartbeat-ms", "10 ms", "1"]),
        (["--resume"], ["--resume", "--checkpoint-dir"]),
        (["--tls-cert", "a.pem"], ["--tls-cert", "--tls-key", "a.pem"]),
        (["--eval-every", "-1"], ["--eval-every", "-1"]),
    ],
)
def test_config_errors_name_the_value(argv: list[str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args(argv)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_toml_file_with_dashes_and_underscores_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        'q = 6\nmin-workers = 4\ntau = "2s"\nrule = "median"\nsgd_timeout = 5000\n'
        "hidden = [64, 32]\nearly-close = false\nlr = 0.05\n"
    )
    cfg = parse_args(["--config", str(path), "--q", "8"])
    assert (cfg.q, cfg.min_workers, cfg.tau_ms, cfg.rule, cfg.sgd_timeout) == (8, 4, 2000.0, "median", 5000.0)
    assert cfg.hidden == (64, 32) and cfg.early_close is False and cfg.lr == 0.05
    assert cfg.quorum == rounds.default_quorum(8, "median", 0)


def test_toml_server_table(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    path.write_text('[server]\nq = 3\ntau = "inf"\n\n[worker]\nrate = 5\n')
    assert load_toml(path) == {"q": 3, "tau": Deadline.of_ms(math.inf)}


def test_unknown_toml_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("q = 3\nquorom = 2\ntua = 5\n")
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", str(path)])
    assert "quorom" in str(info.value) and "tua" in str(info.value) and str(path) in str(info.value)


def test_toml_type_errors_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "types.toml"
    path.write_text('q = "many"\n')
    with pytest.raises(ConfigError, match="--q: expected an integer, got 'many'"):
        parse_args(["--config", str(path)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "missing.toml")])
    path.write_text("q = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_args(["--config", str(path)])


def test_token_is_masked_in_as_dict() -> None:
    cfg = ServerConfig(token="s3cret")
    assert cfg.as_dict()["token"] == "***" and "s3cret" not in repr(cfg)


def test_cli_prints_config_errors_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from hgo_server.cli import main

    assert main(["--tau", "-5"]) == 2
    err = capsys.readouterr().err
    assert "hgo-server: error:" in err and "--tau" in err and "-5" in err


def test_l2_defaults_to_the_models_own() -> None:
    from hgo_server.setup import load_setup

    svm = load_setup(parse_args(["--dataset", "breast-cancer", "--model", "svm", "--q", "2"]))
    assert svm.spec.l2 == pytest.approx(1e-4)  # the SVM's documented default regularization
    logistic = load_setup(parse_args(["--dataset", "breast-cancer", "--model", "logistic", "--q", "2"]))
    assert logistic.spec.l2 == 0.0
    argv = ["--dataset", "breast-cancer", "--model", "svm", "--l2", "0.5", "--q", "2"]
    explicit = load_setup(parse_args(argv))
    assert explicit.spec.l2 == 0.5


def test_files_on_the_command_line_are_checked_before_serving(tmp_path: Path) -> None:
    """Missing or unusable files fail check_paths (what the CLI runs after parse_args) with the flag and
    the path; nothing is created."""
    keep = tmp_path / "keep.txt"
    keep.write_text("keep\n")
    cases = [
        (["--config", str(tmp_path)], ["--config", "cannot read", str(tmp_path)]),
        (["--tokens-file", str(tmp_path / "t.txt")], ["--tokens-file", "t.txt", "does not exist"]),
        (["--tokens-file", str(tmp_path)], ["--tokens-file", "not a regular file"]),
        (["--tls-cert", str(keep), "--tls-key", str(tmp_path / "k.pem")], ["--tls-key", "k.pem"]),
        (["--log", str(tmp_path)], ["--log", "not a regular file"]),
        (["--log", str(keep / "r.jsonl")], ["--log", "keep.txt", "not a directory"]),
        (["--port-file", str(tmp_path / "no" / "p")], ["--port-file", "does not exist"]),
        (["--checkpoint-dir", str(keep)], ["--checkpoint-dir", "keep.txt", "not a directory"]),
    ]
    for argv, needles in cases:
        with pytest.raises(ConfigError) as info:
            check_paths(parse_args(argv))
        for needle in needles:
            assert needle in str(info.value), (argv, needle, str(info.value))
    assert keep.read_text() == "keep\n" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    # An existing log is fine (it is appended to); a log in a directory still to be made is fine too.
    cfg = parse_args(["--log", str(keep), "--checkpoint-dir", str(tmp_path / "a" / "ck")])
    check_paths(cfg)
    assert cfg.log == str(keep) and not (tmp_path / "a").exists()


def test_toml_type_error_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('rounds = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert "bad.toml" in str(info.value) and "'rounds'" in str(info.value) and "'many'" in str(info.value)


def test_to_toml_reads_back_to_the_same_config(tmp_path: Path) -> None:
    from hgo_server import config as cfgmod

    settings = dict(q=7, tau="inf", algorithm="sgd", hidden=[5, 6], data_dir='dir "quoted"\\x', lr=0.25)
    cfg = cfgmod.from_mapping({**settings, "early_close": False, "token": "not-written"})
    text = cfgmod.to_toml(cfg)
    assert "not-written" not in text and "tau = inf" in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert cfgmod.resolve(cfgmod.ServerConfig(**cfgmod.load_toml(path))) == cfg.replace(token=None)


def test_token_sources_and_refusals(tmp_path: Path) -> None:
    from hgo_server.config import load_token

    good = "a-real-token-of-32-bytes-0123456"
    # $HGO_TOKEN when no flag gives one; an empty variable is no token
    assert load_token(parse_args([]), env={"HGO_TOKEN": good}).token == good
    assert load_token(parse_args([]), env={"HGO_TOKEN": ""}).token is None
    assert load_token(parse_args([]), env={}).token is None
    # --token-file: one line, the newline stripped; the flag wins over the environment
    path = tmp_path / "token"
    path.write_text(good + "\n")
    cfg = load_token(parse_args(["--token-file", str(path)]), env={"HGO_TOKEN": "other-token-0123456789"})
    assert cfg.token == good and good not in repr(cfg)
    assert cfg.as_dict()["token"] == "***"
    path.write_text("two words\n")
    with pytest.raises(ConfigError, match="more than one word"):
        load_token(parse_args(["--token-file", str(path)]), env={})
    # the committed placeholders and short tokens are refused, saying how to make one
    for bad, why in (("change-me-before-use", "placeholder"), ("hgo-dev-token", "placeholder"),
                     ("fifteen-bytes!!", "15 bytes")):  # fmt: skip
        with pytest.raises(ConfigError, match=why) as err:
            load_token(parse_args([]), env={"HGO_TOKEN": bad})
        assert "$HGO_TOKEN" in str(err.value) and "secrets.token_urlsafe(32)" in str(err.value)
    assert load_token(parse_args(["--token", "x" * 16]), env={}).token == "x" * 16


def test_v_auto_is_the_papers_quorum() -> None:
    """--v auto = floor(f / 0.5) + 1, never fewer rows than the rule needs (rounds.auto_quorum)."""
    from hgo_common import rounds
    from hgo_server import config as cfgmod

    assert cfgmod.parse_args(["--v", "auto", "--q", "80"]).quorum == 1  # honest: the longest prefix
    assert cfgmod.parse_args(["--v", "auto", "--q", "80", "--f", "10", "--rule", "median"]).quorum == 21
    krum = cfgmod.parse_args(["--v", "auto", "--q", "80", "--f", "10", "--rule", "krum"]).quorum
    assert krum == rounds.auto_quorum(80, "krum", 10) == max(21, 2 * 10 + 3)
    assert cfgmod.from_mapping({"v": "auto", "q": 8}).quorum == 1  # TOML spelling too
    for bad in ("0", "-1"):
        with pytest.raises(cfgmod.ConfigError, match="--v must be in"):
            cfgmod.parse_args(["--v", bad])
