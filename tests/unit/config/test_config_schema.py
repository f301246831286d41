"""msting.config.schema: config.yaml's defaults, validation, loading and environment override."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from config_testing import REPO, write_config

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.paths import Paths
from msting.config.schema import Config, LLMConfig, default_config_text, load_config, parse_config


def problems_of(text: str, paths: Paths) -> list[ConfigProblem]:
    write_config(paths, text)
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={})
    return exc.value.problems


# --------------------------------------------------------------------------- defaults


def test_dataclass_defaults_equal_default_yaml() -> None:
    data = yaml.safe_load(default_config_text())
    assert parse_config(data, None) == Config()


def test_default_yaml_values_as_documented() -> None:
    cfg = Config()
    assert cfg.llm_service.port == 8086
    assert cfg.llm_service.host == "127.0.0.1"
    assert cfg.llm_service.socket is None
    assert cfg.llm_service.restart.max_crashes == 5
    assert cfg.llm_service.restart.jitter == 0.2
    assert cfg.llm_service.api_key_env_var == "LLM_API_KEY"
    assert cfg.llm.model == "builtin:tiny"
    assert cfg.llm.n_threads is None
    assert cfg.llm.parallel is None  # automatic
    assert cfg.logging.console_level == "WARNING"
    assert cfg.logging.max_bytes == 10485760
    assert cfg.url == "http://127.0.0.1:8086"


def test_every_key_in_default_yaml_has_a_comment() -> None:
    lines = default_config_text().splitlines()
    key_re = re.compile(r"^\s*[A-Za-z_]+:")
    for i, line in enumerate(lines):
        if key_re.match(line):
            assert i > 0 and lines[i - 1].strip().startswith("#"), f"no comment above {line!r}"


def test_repo_config_symlink_points_at_default() -> None:
    link = REPO / "config" / "config.yaml"
    assert link.is_symlink()
    assert os.readlink(link) == "../src/msting/config/default.yaml"
    assert link.read_text(encoding="utf-8") == default_config_text()


def test_no_user_file_means_shipped_defaults(paths: Paths) -> None:
    assert not paths.config_file.exists()
    cfg = load_config(paths, env={})
    assert cfg == Config()
    assert cfg.source is None


def test_empty_file_means_defaults(paths: Paths) -> None:
    f = write_config(paths, "# nothing but a comment\n")
    cfg = load_config(paths, env={})
    assert cfg == Config(source=f)


def test_empty_section_means_section_defaults() -> None:
    assert parse_config({"llm": None, "logging": {}}, None) == Config()


def test_import_is_cheap() -> None:
    code = "import sys, msting.config; print(sorted(m for m in ('yaml', 'platformdirs') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------- validation


def test_unknown_key_with_suggestion(paths: Paths) -> None:
    (problem,) = problems_of("llm_service:\n  prot: 9000\n", paths)
    assert problem.key == "llm_service.prot"
    assert "unknown key" in problem.message
    assert "did you mean 'port'" in problem.message


def test_unknown_key_in_wrong_section_suggests_full_key(paths: Paths) -> None:
    (problem,) = problems_of("port: 9000\n", paths)
    assert problem.key == "port"
    assert "did you mean 'llm_service.port'" in problem.message


def test_unknown_key_without_close_match_lists_known_keys(paths: Paths) -> None:
    (problem,) = problems_of("zzz: 1\n", paths)
    assert problem.message.startswith("unknown key")
    assert "did you mean" not in problem.message
    assert "llm_service" in problem.message


def test_unknown_key_nested_level(paths: Paths) -> None:
    (problem,) = problems_of("llm_service:\n  restart:\n    max_crash: 3\n", paths)
    assert problem.key == "llm_service.restart.max_crash"
    assert "did you mean 'max_crashes'" in problem.message


def test_every_problem_is_listed(paths: Paths) -> None:
    text = (
        "llm_service:\n"
        "  port: abc\n"
        "  queue_size: 0\n"
        "  restart:\n"
        "    jitter: 1.5\n"
        "llm:\n"
        "  temprature: 0.5\n"
        "  n_ctx: 8\n"
        "logging:\n"
        "  console_level: LOUD\n"
    )
    f = write_config(paths, text)
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={})
    err = exc.value
    assert [p.key for p in err.problems] == [
        "llm_service.port",
        "llm_service.queue_size",
        "llm_service.restart.jitter",
        "llm.temprature",
        "llm.n_ctx",
        "logging.console_level",
    ]
    assert err.source == f
    lines = str(err).splitlines()
    assert len(lines) == 6
    assert all(line.startswith(f"{f}: ") for line in lines)
    assert lines[0] == f"{f}: llm_service.port: must be an integer between 1 and 65535, got 'abc'"
    assert "did you mean 'temperature'" in lines[3]
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in lines[5]


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("llm_service", "port", "'8086'", "must be an integer between 1 and 65535, got '8086'"),
        ("llm_service", "port", "true", "must be an integer between 1 and 65535, got true"),
        ("llm_service", "port", "0", "must be an integer between 1 and 65535, got 0"),
        ("llm_service", "port", "65536", "must be an integer between 1 and 65535, got 65536"),
        ("llm_service", "port", "80.5", "must be an integer between 1 and 65535, got 80.5"),
        ("llm_service", "port", "null", "must be an integer between 1 and 65535, got null"),
        ("llm_service", "queue_size", "true", "must be an integer >= 1, got true"),
        ("llm_service", "enabled", "'yes'", "must be true or false, got 'yes'"),
        ("llm_service", "enabled", "1", "must be true or false, got 1"),
        ("llm_service", "host", "''", "must be a non-empty string, got ''"),
        ("llm_service", "host", "[a, b]", "must be a non-empty string, got a list"),
        ("llm_service", "socket", "5", "must be a non-empty string or null, got 5"),
        ("llm_service", "health_interval_sec", "0", "must be a number > 0, got 0"),
        ("llm_service", "hang_timeout_sec", "false", "must be a number > 0, got false"),
        ("llm_service", "api_key_env_var", "'my key'", "must be an environment variable name"),
        ("llm", "temperature", "-0.1", "must be a number between 0 and 2, got -0.1"),
        ("llm", "temperature", ".nan", "must be a number between 0 and 2, got nan"),
        ("llm", "temperature", "3", "must be a number between 0 and 2, got 3"),
        ("llm", "max_tokens", "2000000", "must be an integer between 1 and 1048576, got 2000000"),
        ("llm", "max_tokens", "0", "must be an integer between 1 and 1048576, got 0"),
        ("llm", "n_ctx", "8", "must be an integer >= 16, got 8"),
        ("llm", "n_threads", "0", "must be an integer >= 1 or null, got 0"),
        ("llm", "parallel", "0", "must be an integer between 1 and 64 or null, got 0"),
        ("llm", "parallel", "65", "must be an integer between 1 and 64 or null, got 65"),
        ("llm", "model", "builtin:huge", "unknown builtin model 'builtin:huge'"),
        ("logging", "file_level", "verbose", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'verbose'"),
        ("logging", "backups", "-1", "must be an integer >= 0, got -1"),
    ],
)
def test_bad_values(paths: Paths, section: str, key: str, value: str, expected: str) -> None:
    (problem,) = problems_of(f"{section}:\n  {key}: {value}\n", paths)
    assert problem.key == f"{section}.{key}"
    assert problem.message.startswith(expected)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("jitter", "1", "must be a number >= 0 and < 1, got 1"),
        ("max_crashes", "0", "must be an integer >= 1, got 0"),
        ("backoff_multiplier", "0.5", "must be a number >= 1, got 0.5"),
        ("crash_window_sec", "-5", "must be a number > 0, got -5"),
    ],
)
def test_bad_restart_values(paths: Paths, key: str, value: str, expected: str) -> None:
    (problem,) = problems_of(f"llm_service:\n  restart:\n    {key}: {value}\n", paths)
    assert problem.key == f"llm_service.restart.{key}"
    assert problem.message == expected


def test_backoff_max_below_initial(paths: Paths) -> None:
    text = "llm_service:\n  restart:\n    backoff_initial_sec: 5\n    backoff_max_sec: 1\n"
    (problem,) = problems_of(text, paths)
    assert problem.key == "llm_service.restart.backoff_max_sec"


def test_section_must_be_a_mapping(paths: Paths) -> None:
    (problem,) = problems_of("llm: builtin:tiny\n", paths)
    assert problem.key == "llm"
    assert "mapping" in problem.message


def test_top_level_must_be_a_mapping(paths: Paths) -> None:
    (problem,) = problems_of("- a\n- b\n", paths)
    assert problem.key == ""
    assert "top level must be a mapping" in problem.message


def test_accepted_coercions() -> None:
    cfg = parse_config(
        {
            "llm_service": {"port": 9000.0, "health_interval_sec": 5, "drain_grace_sec": 0},
            "llm": {"temperature": 1, "n_threads": 4, "model_name": "mine"},
            "logging": {"console_level": "debug", "file_level": "Error"},
        },
        None,
    )
    assert cfg.llm_service.port == 9000 and type(cfg.llm_service.port) is int
    assert cfg.llm_service.health_interval_sec == 5.0 and type(cfg.llm_service.health_interval_sec) is float
    assert cfg.llm.temperature == 1.0 and type(cfg.llm.temperature) is float
    assert cfg.llm.n_threads == 4
    assert cfg.logging.console_level == "DEBUG"
    assert cfg.logging.file_level == "ERROR"


# ------------------------------------------------------------------------------- YAML


def test_yaml_syntax_error_names_file_and_line(paths: Paths) -> None:
    f = write_config(paths, "llm_service:\n  port: 8086\n  host: [127.0.0.1\nllm:\n  model: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={})
    (problem,) = exc.value.problems
    assert problem.line is not None
    msg = str(exc.value)
    assert msg.startswith(f"{f}: invalid YAML at line {problem.line}")


def test_yaml_syntax_error_bad_indent_line(paths: Paths) -> None:
    f = write_config(paths, "llm:\n  model: a\n    n_ctx: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={})
    assert exc.value.problems[0].line == 3
    assert str(exc.value).startswith(f"{f}: invalid YAML at line 3")


def test_duplicate_key_is_an_error(paths: Paths) -> None:
    f = write_config(paths, "llm_service:\n  port: 1000\n  port: 2000\n")
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={})
    (problem,) = exc.value.problems
    assert problem.line == 3
    assert "duplicate key 'port'" in problem.message
    assert str(exc.value).startswith(f"{f}: ")


# ------------------------------------------------------------------------ environment


def test_port_env_override(paths: Paths) -> None:
    write_config(paths, "llm_service:\n  port: 9001\n")
    cfg = load_config(paths, env={"MSTING_LLM_PORT": "9100"})
    assert cfg.llm_service.port == 9100
    assert cfg.url == "http://127.0.0.1:9100"
    assert load_config(paths, env={"MSTING_LLM_PORT": ""}).llm_service.port == 9001


def test_port_env_override_uses_process_env(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSTING_LLM_PORT", "9200")
    assert load_config(paths).llm_service.port == 9200


@pytest.mark.parametrize("raw", ["abc", "0", "70000", "80.0", "true"])
def test_port_env_override_invalid(paths: Paths, raw: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={"MSTING_LLM_PORT": raw})
    (problem,) = exc.value.problems
    assert problem.key == "MSTING_LLM_PORT"
    assert str(exc.value).startswith(f"MSTING_LLM_PORT: must be an integer between 1 and 65535, got {raw!r}")


# ---------------------------------------------------------------------------- helpers


def test_served_name_rules() -> None:
    assert LLMConfig().served_name == "msting-tiny"
    assert LLMConfig().is_builtin
    assert LLMConfig().model_path is None
    assert LLMConfig(model_name="alias").served_name == "alias"
    m = LLMConfig(model="/models/Llama-3.2-1B-Instruct.Q4_K_M.gguf")
    assert not m.is_builtin
    assert m.served_name == "Llama-3.2-1B-Instruct.Q4_K_M"
    assert LLMConfig(model="/models/x.gguf", model_name="fast").served_name == "fast"


def test_socket_and_log_file(paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    assert cfg.socket_path(paths) == paths.default_socket
    assert cfg.log_file(paths) == paths.daemon_log

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config({"llm_service": {"socket": "~/s.sock"}, "logging": {"file": "~/d.log"}}, None)
    assert cfg.socket_path(paths) == tmp_path / "s.sock"
    assert cfg.log_file(paths) == tmp_path / "d.log"


def test_relative_paths_are_relative_to_the_config_file(paths: Paths) -> None:
    f = write_config(
        paths,
        "llm_service:\n  socket: s.sock\nllm:\n  model: ../m/x.gguf\nlogging:\n  file: logs/d.log\n",
    )
    cfg = load_config(paths, env={})
    assert cfg.socket_path(paths) == f.parent / "s.sock"
    assert cfg.log_file(paths) == f.parent / "logs" / "d.log"
    assert cfg.llm.model_path == f.parent / ".." / "m" / "x.gguf"
    assert cfg.llm.served_name == "x"


def test_url_brackets_ipv6() -> None:
    cfg = parse_config({"llm_service": {"host": "::1", "port": 9}}, None)
    assert cfg.url == "http://[::1]:9"


def test_config_error_without_source() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"llm_service": {"port": "x"}}, None)
    assert str(exc.value) == "llm_service.port: must be an integer between 1 and 65535, got 'x'"
