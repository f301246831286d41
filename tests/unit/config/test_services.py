"""msting.config.services: config.yaml's remote LLM services (llm.services, llm.fallback_chain,
llm.default_service), their validation, and the API key kept out of sight."""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from typing import Any

import pytest
import yaml
from config_testing import write_config

from msting.config.errors import ConfigError
from msting.config.paths import Paths
from msting.config.schema import Config, LLMConfig, default_config_text, load_config, parse_config
from msting.config.services import BUILTIN_SERVICES, RemoteServiceConfig, UpstreamConfig, wire_base

SECRET = "sk-very-secret-1234"

TWO_SERVICES = f"""
    llm:
      default_service: lan
      fallback_chain: [lan, local, stub]
      services:
        lan:
          api_format: openai
          urls: ["http://127.0.0.1:8001/", "http://127.0.0.1:8002/v1"]
          api_key_env_var: LAN_KEY
          models: [llama3.2:3b, qwen2.5:0.5b]
          default_model: llama3.2:3b
          upstream:
            max_attempts: 5
            verify_cert: false
        claude:
          api_format: anthropic
          urls: [https://api.anthropic.com/v1]
          api_key: {SECRET}
"""


def parse(text: str) -> Config:
    return parse_config(yaml.safe_load(textwrap.dedent(text)), None)


def problems(text: str) -> list[str]:
    """The problems of config text, as "key: message"."""
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return [str(p) for p in exc.value.problems]


def service(body: str, name: str = "lan") -> str:
    """config text with one service ``name`` whose keys are ``body`` (YAML, dedented)."""
    indented = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 6)
    return f"llm:\n  services:\n    {name}:\n{indented}\n"


OK = "api_format: openai\nurls: [http://h:1]\n"


def one_problem(text: str) -> str:
    (p,) = problems(text)
    return p


# ------------------------------------------------------------------------- valid


def test_two_services_a_chain_and_a_configured_default_service() -> None:
    llm = parse(TWO_SERVICES).llm
    assert llm.default_service == "lan"
    assert llm.fallback_chain == ("lan", "local", "stub")
    assert llm.service_names == ("local", "stub", "lan", "claude")
    assert [s.name for s in llm.services] == ["lan", "claude"]
    lan = llm.service("lan")
    assert lan is not None and lan.api_format == "openai"
    assert lan.urls == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")  # no trailing '/', no /v1
    assert lan.models == ("llama3.2:3b", "qwen2.5:0.5b") and lan.default_model == "llama3.2:3b"
    assert lan.upstream == UpstreamConfig(max_attempts=5, verify_cert=False)
    claude = llm.service("claude")
    assert claude is not None and claude.urls == ("https://api.anthropic.com",) and claude.upstream == UpstreamConfig()
    assert llm.service("local") is None and llm.service("nope") is None


def test_the_defaults() -> None:
    llm = LLMConfig()
    assert llm.services == () and llm.fallback_chain == () and llm.default_service == "local"
    assert llm.service_names == BUILTIN_SERVICES == ("local", "stub")
    up = UpstreamConfig()
    assert (up.short_timeout_sec, up.long_timeout_sec, up.first_token_timeout_sec) == (5, 180, 30)
    assert up.verify_cert and up.enable_discovery and up.health_interval_sec == 30
    assert (up.max_attempts, up.backoff_initial_sec, up.backoff_max_sec) == (3, 0.2, 5)
    assert (up.breaker_failures, up.breaker_window_sec, up.breaker_cooldown_sec) == (3, 30, 10)


@pytest.mark.parametrize("empty", ["services:", "services: null", "services: {}"])
def test_no_services(empty: str) -> None:
    assert parse(f"llm:\n  {empty}\n  fallback_chain: [stub, local]\n").llm.services == ()


@pytest.mark.parametrize("name", ["stub", "local"])
def test_the_built_in_services_can_be_the_default(name: str) -> None:
    assert parse(f"llm:\n  default_service: {name}\n").llm.default_service == name


@pytest.mark.parametrize(
    ("api_format", "url", "stored"),
    [
        ("openai", "http://h:8001/v1", "http://h:8001"),
        ("openai", "http://h:8001/v1/", "http://h:8001"),
        ("openai", "http://h/proxy/V1", "http://h/proxy"),
        ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com"),
        ("ollama", "http://h:11434/v1", "http://h:11434/v1"),  # ollama's paths are /api/...: kept
        ("ollama", "http://h:11434//", "http://h:11434"),
        ("openai", "http://[::1]:8001", "http://[::1]:8001"),
        ("openai", "https://h/v1x", "https://h/v1x"),
    ],
)
def test_urls_are_stored_as_base_urls(api_format: str, url: str, stored: str) -> None:
    svc = parse(service(f"api_format: {api_format}\nurls: ['{url}']")).llm.services[0]
    assert svc.urls == (stored,)
    assert wire_base(url.rstrip("/"), api_format) == stored


def test_the_shipped_example_service_parses_with_the_defaults() -> None:
    """default.yaml's commented-out example shows every key, with the defaults."""
    lines = default_config_text().splitlines()
    start = lines.index("  # services:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line[4:])  # "  # x" -> "x"
    example = yaml.safe_load("\n".join(block))
    lan = parse_config({"llm": example}, None).llm.service("lan")
    assert lan is not None
    assert lan.upstream == UpstreamConfig()
    written = example["services"]["lan"]
    assert set(written) | {"api_key"} == {f for f in RemoteServiceConfig.__dataclass_fields__ if f != "name"}
    assert set(written["upstream"]) == set(UpstreamConfig.__dataclass_fields__)
    assert "api_key:" in "\n".join(block)  # mentioned, not set


# ----------------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("local", "llm.services.local: 'local' is built in (local and stub are); give this service another name"),
        ("stub", "llm.services.stub: 'stub' is built in (local and stub are); give this service another name"),
        ("Local", "llm.services.Local: 'Local' is built in (local and stub are); give this service another name"),
        ("a~b", "llm.services.a~b: a service name must not contain '~' (it separates service and model, as in ab~llama3.2:3b)"),
        ("-lan", "llm.services.-lan: a service name uses letters, digits, '.', '_' and '-', starting with a letter or digit; got '-lan'"),
        ("'my lan'", "llm.services.my lan: a service name uses letters, digits, '.', '_' and '-', starting with a letter or digit; got 'my lan'"),
        ("1", "llm.services.1: a service name must be a string (letters, digits, '.', '_' and '-', starting with a letter or digit), got 1; quote it"),
    ],
)
def test_bad_service_names(name: str, message: str) -> None:
    assert one_problem(service(OK, name)) == message


def test_good_service_names() -> None:
    names = ["lan", "gpu-box.2", "A_1", "9"]
    text = "llm:\n  services:\n" + "".join(f"    '{n}':\n      api_format: ollama\n      urls: [http://h]\n" for n in names)
    assert [s.name for s in parse(text).llm.services] == names


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("urls: [http://h]", "llm.services.lan.api_format: is required: one of openai, ollama, anthropic"),
        ("api_format: grpc\nurls: [http://h]", "llm.services.lan.api_format: must be one of openai, ollama, anthropic, got 'grpc'"),
        ("api_format: openai", "llm.services.lan.urls: is required: a list of the service's http:// or https:// URLs"),
        ("api_format: openai\nurls: []",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, got an empty list"),
        ("api_format: openai\nurls: http://h",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, got 'http://h'; write a list, even of one URL: [http://h]"),
        ("api_format: openai\nurls: {a: 1}",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, got a mapping"),
        ("api_format: openai\nurls: [ftp://h]",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'ftp://h' does not start with http:// or https://"),
        ("api_format: openai\nurls: [h:8001]",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'h:8001' does not start with http:// or https://"),
        ("api_format: openai\nurls: ['http://']",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'http://' has no host"),
        ("api_format: openai\nurls: ['http://h:99999']",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'http://h:99999' has a bad port"),
        ("api_format: openai\nurls: ['http://h/?key=1']",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'http://h/?key=1' has a query (?...; give the server's base URL)"),
        ("api_format: openai\nurls: ['http://h/#top']",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'http://h/#top' has a fragment (#...; give the server's base URL)"),
        ("api_format: openai\nurls: ['http://h/a b']",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'http://h/a b' has a space in it"),
        ("api_format: openai\nurls: [http://h, 'http://h/']",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'http://h' is listed twice"),
        ("api_format: openai\nurls: [http://h, 3, ftp://x]",
         "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 3 is not a URL; 'ftp://x' does not start with http:// or https://"),
        ("api_format: openai\nurls: [http://h/v1, http://h]",
         "llm.services.lan.urls: 'http://h/v1' and 'http://h' are the same server: a trailing /v1 is dropped for openai (msting adds the /v1/... paths itself)"),
        (OK + "api_key_env_var: 1KEY",
         "llm.services.lan.api_key_env_var: must be an environment variable name (letters, digits, _) or null, got '1KEY'"),
        (OK + "api_key_env_var: LAN_KEY\napi_key: x",
         "llm.services.lan.api_key: give either api_key or api_key_env_var, not both (api_key_env_var is 'LAN_KEY')"),
        (OK + "models: [a, '']", "llm.services.lan.models: must be a list of non-empty strings, got a list"),
        (OK + "models: a", "llm.services.lan.models: must be a list of non-empty strings, got 'a'"),
        (OK + "default_model: ''", "llm.services.lan.default_model: must be a non-empty string or null, got ''"),
        (OK + "upstream: 3", "llm.services.lan.upstream: must be a mapping of keys to values, got 3"),
        (OK + "api_fromat: openai", "llm.services.lan.api_fromat: unknown key (did you mean 'api_format'?)"),
        (OK + "max_attempts: 2", "llm.services.lan.max_attempts: unknown key here (did you mean 'llm.services.lan.upstream.max_attempts'?)"),
        (OK + "upstream:\n  max_attempt: 2", "llm.services.lan.upstream.max_attempt: unknown key (did you mean 'max_attempts'?)"),
        (OK + "upstream:\n  health_interval_sec: 0",
         "llm.services.lan.upstream.health_interval_sec: must be a number > 0, got 0"),
    ],
)
def test_each_service_rule(body: str, message: str) -> None:
    assert one_problem(service(body)) == message


def test_the_credentials_of_a_url_are_not_shown() -> None:
    (p,) = problems(service("api_format: openai\nurls: ['https://me:hunter2@h:8443/v1']"))
    assert p == ("llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, "
                 "but 'https://***@h:8443' has credentials in it (give the key with api_key_env_var)")
    assert "hunter2" not in p


def test_v1_is_only_the_same_server_for_the_formats_that_add_it() -> None:
    svc = parse(service("api_format: ollama\nurls: [http://h/v1, http://h]")).llm.services[0]
    assert svc.urls == ("http://h/v1", "http://h")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("short_timeout_sec", "0", "must be a number > 0, got 0"),
        ("long_timeout_sec", "-1", "must be a number > 0, got -1"),
        ("first_token_timeout_sec", "abc", "must be a number > 0, got 'abc'"),
        ("breaker_window_sec", "0", "must be a number > 0, got 0"),
        ("breaker_cooldown_sec", ".inf", "must be a number > 0, got inf"),
        ("backoff_initial_sec", "0", "must be a number > 0, got 0"),
        ("max_attempts", "0", "must be an integer between 1 and 20, got 0"),
        ("max_attempts", "21", "must be an integer between 1 and 20, got 21"),
        ("max_attempts", "2.5", "must be an integer between 1 and 20, got 2.5"),
        ("breaker_failures", "0", "must be an integer >= 1, got 0"),
        ("verify_cert", "'yes'", "must be true or false, got 'yes'"),
        ("enable_discovery", "1", "must be true or false, got 1"),
    ],
)
def test_upstream_values(key: str, value: str, expected: str) -> None:
    assert one_problem(service(OK + f"upstream:\n  {key}: {value}")) == f"llm.services.lan.upstream.{key}: {expected}"


def test_upstream_cross_checks_are_reported_together() -> None:
    text = service(OK + "upstream:\n  backoff_initial_sec: 2\n  backoff_max_sec: 1\n  long_timeout_sec: 20\n  first_token_timeout_sec: 30")
    assert problems(text) == [
        "llm.services.lan.upstream.backoff_max_sec: must be >= backoff_initial_sec (2), got 1",
        "llm.services.lan.upstream.first_token_timeout_sec: must be <= long_timeout_sec (20), got 30",
    ]
    equal = service(OK + "upstream:\n  backoff_initial_sec: 1\n  backoff_max_sec: 1\n  long_timeout_sec: 30")
    assert parse(equal).llm.services[0].upstream.backoff_max_sec == 1


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        ("default_service: lna", "llm.default_service: 'lna' is not a service (did you mean 'lan'? the services are: local, stub, lan)"),
        ("default_service: remote", "llm.default_service: 'remote' is not a service (the services are: local, stub, lan)"),
        ("default_service: 3", "llm.default_service: must be a non-empty string, got 3"),
        ("fallback_chain: [lan, gpu, local]", "llm.fallback_chain: 'gpu' is not a service (the services are: local, stub, lan)"),
        ("fallback_chain: [lan, stub, lan]", "llm.fallback_chain: 'lan' is listed twice"),
        ("fallback_chain: lan", "llm.fallback_chain: must be a list of non-empty strings, got 'lan'"),
        ("services: [lan]", "llm.services: must be a mapping of service names to services, got a list"),
        ("services:\n    lan: http://h", "llm.services.lan: must be a mapping of keys to values, got 'http://h'"),
        ("service: {}", "llm.service: unknown key (did you mean 'services'?)"),
    ],
)
def test_the_names_of_services(llm: str, message: str) -> None:
    text = f"llm:\n  {llm}\n"
    if not llm.startswith("services"):
        text += "  services:\n    lan:\n      api_format: ollama\n      urls: [http://h]\n"
    assert one_problem(text) == message


def test_without_services_the_message_says_where_they_are_configured() -> None:
    assert one_problem("llm:\n  default_service: lan\n") == (
        "llm.default_service: 'lan' is not a service (the services are: local, stub; configure others under llm.services)"
    )


def test_an_upstream_key_at_the_top_points_into_the_services() -> None:
    assert one_problem("max_attempts: 3\n") == "max_attempts: unknown key here (did you mean 'llm.services.<name>.upstream.max_attempts'?)"


def test_every_problem_is_listed_at_once() -> None:
    text = """
        llm:
          default_service: lna
          fallback_chain: [lan, lan, gpu]
          services:
            lan:
              api_format: grpc
              urls: [ftp://h]
              upstream:
                max_attempts: 0
                zzz: 3
            stub:
              api_format: openai
              urls: [http://h]
            other:
              urls: [http://h]
              api_kye_env_var: X
        llm_service:
          port: 0
    """
    assert problems(text) == [
        "llm.services.lan.api_format: must be one of openai, ollama, anthropic, got 'grpc'",
        "llm.services.lan.urls: must be a non-empty list of http:// or https:// URLs, but 'ftp://h' does not start with http:// or https://",
        "llm.services.lan.upstream.max_attempts: must be an integer between 1 and 20, got 0",
        "llm.services.lan.upstream.zzz: unknown key (expected one of: " + ", ".join(UpstreamConfig.__dataclass_fields__) + ")",
        "llm.services.stub: 'stub' is built in (local and stub are); give this service another name",
        "llm.services.other.api_kye_env_var: unknown key (did you mean 'api_key_env_var'?)",
        "llm.services.other.api_format: is required: one of openai, ollama, anthropic",
        # a service with problems still has its name: the names are checked too
        "llm.default_service: 'lna' is not a service (did you mean 'lan'? the services are: local, stub, lan, other)",
        "llm.fallback_chain: 'lan' is listed twice",
        "llm.fallback_chain: 'gpu' is not a service (the services are: local, stub, lan, other)",
        "llm_service.port: must be an integer between 1 and 65535, got 0",
    ]


def test_problems_name_the_file(paths: Paths) -> None:
    f = write_config(paths, service("api_format: openai"))
    with pytest.raises(ConfigError) as exc:
        load_config(paths, env={})
    assert str(exc.value) == f"{f}: llm.services.lan.urls: is required: a list of the service's http:// or https:// URLs"


# --------------------------------------------------------------------- the API key


def _keyed(**changes: Any) -> RemoteServiceConfig:
    return replace(parse(TWO_SERVICES).llm.services[1], **changes)


def test_the_key_is_not_in_the_repr() -> None:
    cfg = parse(TWO_SERVICES)
    assert SECRET not in repr(cfg) and SECRET not in repr(cfg.llm.service("claude")) and SECRET not in str(cfg)
    assert "api_key=" not in repr(cfg.llm.service("claude"))
    assert cfg.llm.service("claude").api_key == SECRET  # type: ignore[union-attr]


def test_the_key_is_masked_in_as_dict() -> None:
    d = parse(TWO_SERVICES).as_dict()
    assert SECRET not in repr(d)
    services = d["llm"]["services"]
    assert list(services) == ["lan", "claude"]  # the mapping as written, the name as its key
    assert services["claude"]["api_key"] == "***"
    assert services["lan"]["api_key"] is None and services["lan"]["api_key_env_var"] == "LAN_KEY"
    assert "name" not in services["lan"]
    assert services["lan"]["upstream"]["max_attempts"] == 5
    assert d["llm"]["fallback_chain"] == ("lan", "local", "stub")
    assert "source" not in d
    assert Config().as_dict()["llm"]["services"] == {}


def test_the_as_dict_display_is_yaml_safe_and_masked() -> None:
    """What a command showing the configuration prints (YAML or JSON of as_dict)."""
    import json

    d = parse(TWO_SERVICES).as_dict()
    for shown in (yaml.safe_dump(json.loads(json.dumps(d))), json.dumps(d)):
        assert SECRET not in shown and "***" in shown


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ("12345678", "got a number"),
        ("''", "got an empty string"),
        ("'   '", "got an empty string"),
        ("[sk-1, sk-2]", "got a list"),
        ("{sk: 1}", "got a mapping"),
        ("true", "got true or false"),
    ],
)
def test_a_bad_key_is_not_echoed(value: str, got: str) -> None:
    p = one_problem(service(OK + f"api_key: {value}"))
    assert p == f"llm.services.lan.api_key: must be a non-empty string or null, {got} (the value is not shown)"
    for part in re.findall(r"[\w-]+", value):
        if part not in ("true",):
            assert part not in p


def test_the_key_is_not_in_any_message_of_a_broken_service() -> None:
    text = service(f"api_format: grpc\nurls: [http://h, http://h]\napi_key: {SECRET}\napi_key_env_var: K\nupstream:\n  long_timeout_sec: 1")
    assert all(SECRET not in p for p in problems(text))
    text = service(f"api_format: openai\nurls: [http://h]\napi_key: {SECRET}\napi_key_env_var: K")
    assert all(SECRET not in p for p in problems(text))


def test_api_key_from() -> None:
    literal = _keyed()
    assert literal.api_key_from({}) == SECRET and literal.key_source == "config"
    from_env = _keyed(api_key=None, api_key_env_var="CLAUDE_KEY")
    assert from_env.api_key_from({"CLAUDE_KEY": " k1 \n"}) == "k1"
    assert from_env.api_key_from({"CLAUDE_KEY": "  "}) is None
    assert from_env.api_key_from({}) is None
    assert from_env.key_source == "env CLAUDE_KEY"
    none = _keyed(api_key=None)
    assert none.api_key_from({"CLAUDE_KEY": "k"}) is None and none.key_source == "none"
    assert parse(TWO_SERVICES).llm.service("lan").api_key_from({"LAN_KEY": "lk"}) == "lk"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "suggested"),
    [
        ("llm:\n  health_interval_sec: 3\n", "llm_service.health_interval_sec"),  # a real key first
        (service(OK + "health_interval_sec: 3"), "llm.services.lan.upstream.health_interval_sec"),  # then the nearest
        (service(OK + "upstream:\n  api_key: x"), "llm.services.lan.api_key"),
    ],
)
def test_a_key_in_the_wrong_place_is_pointed_to_the_nearest_right_one(text: str, suggested: str) -> None:
    assert one_problem(text).endswith(f"unknown key here (did you mean {suggested!r}?)")
