"""msting.config.profiles.schema: the profile schema, its validation, the shipped examples and the implicit profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testing import MINIMAL, QWEN, REPO, SHIPPED, parse_yaml, write_profile

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.profiles.discovery import shipped_profiles_dir
from msting.config.profiles.schema import (
    DOWNLOADS_UNSUPPORTED,
    ModelParams,
    ProfileModel,
    load_profile,
    profile_from_config,
)
from msting.config.schema import Config, parse_config


def problems_of(text: str, name: str = "p", source: Path | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        parse_yaml(text, name, source)
    out: dict[str, str] = {}
    for p in exc.value.problems:
        assert p.key not in out, f"two problems for {p.key}: {out[p.key]!r} and {p.message!r}"
        out[p.key] = p.message
    return out


# ------------------------------------------------------------------- shipped examples


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_example_parses(name: str, home: Path) -> None:
    profile = load_profile(shipped_profiles_dir() / f"{name}.yaml")
    assert profile.name == name
    assert profile.description
    assert profile.default.type == "llm"
    assert profile.memory_budget_mb is None


def test_shipped_default(home: Path) -> None:
    p = load_profile(shipped_profiles_dir() / "default.yaml")
    assert p.default_model == "msting-tiny"
    m = p.default
    assert m.source == "builtin:tiny" and m.is_builtin and m.path is None
    assert (m.name, m.type, m.n_ctx, m.replicas, m.always_ready, m.keep_alive_sec) == ("msting-tiny", "llm", 2048, 1, True, 300.0)
    assert m.params == ModelParams()


def test_shipped_default_is_the_default_config(home: Path) -> None:
    """default.yaml serves what an untouched config.yaml serves."""
    shipped = load_profile(shipped_profiles_dir() / "default.yaml")
    implicit = profile_from_config(Config())
    assert implicit.default_model == shipped.default_model
    assert implicit.models == shipped.models


def test_shipped_small_instruct(home: Path) -> None:
    p = load_profile(shipped_profiles_dir() / "small-instruct.yaml")
    qwen = p.models[QWEN]
    assert p.default_model == QWEN
    assert qwen.path == home / "models" / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    assert qwen.source == str(qwen.path)  # resolved, as config.yaml's llm.model is
    assert qwen.always_ready and qwen.type == "llm"
    fallback = p.models["msting-tiny"]
    assert fallback.is_builtin and not fallback.always_ready and fallback.keep_alive_sec == 300


# ----------------------------------------------------------------------------- schema


def test_minimal_profile_defaults() -> None:
    p = parse_yaml(MINIMAL, name="mine")
    assert p.name == "mine" and p.description == "" and p.memory_budget_mb is None and p.source is None
    m = p.models["story"]
    assert m == ProfileModel(source="builtin:tiny", name="story")
    assert (m.type, m.n_ctx, m.replicas, m.always_ready, m.keep_alive_sec) == ("llm", 2048, 1, True, 300.0)
    assert m.params == ModelParams(temperature=0.7, max_tokens=256, n_threads=None, n_gpu_layers=0, chat_format=None)


def test_full_profile_from_the_issue(tmp_path: Path) -> None:
    src = tmp_path / "story.yaml"
    p = parse_yaml(
        """
        description: text
        default_model: story
        memory_budget_mb: 1536
        models:
          story:
            source: /path/to/model.gguf
            type: LLM
            n_ctx: 4096
            replicas: 2
            parallel: 4
            always_ready: true
            params: {temperature: 0, max_tokens: 64, n_threads: 2, n_gpu_layers: -1, chat_format: chatml}
          embed:
            source: models/embed.gguf
            type: embeddings
            n_ctx: 512
            always_ready: false
            keep_alive_sec: 60.5
        """,
        name="story",
        source=src,
    )
    assert p.description == "text" and p.memory_budget_mb == 1536.0 and p.memory_budget_bytes == 1536 << 20
    assert p.source == src
    story, embed = p.models["story"], p.models["embed"]
    assert story.type == "llm" and story.path == Path("/path/to/model.gguf")
    assert (story.n_ctx, story.replicas, story.parallel) == (4096, 2, 4)
    assert embed.parallel is None  # automatic
    assert story.params == ModelParams(temperature=0.0, max_tokens=64, n_threads=2, n_gpu_layers=-1, chat_format="chatml")
    assert embed.embedding and embed.path == tmp_path / "models" / "embed.gguf"
    assert not embed.always_ready and embed.keep_alive_sec == 60.5
    assert [m.name for m in p.always_ready_models] == ["story"]


def test_every_schema_problem_is_listed_at_once() -> None:
    problems = problems_of(
        """
        description: 5
        default_model: embed
        memory_budget_mb: -1
        routing: {}
        models:
          story:
            source: /x.gguf
            n_ctxx: 100
            replicas: 0
            always_ready: "yes"
            params: {temperature: hot, n_threads: 0, top_k: 3}
          embed:
            source: builtin:tiny
            type: embeddings
          bad name: {source: builtin:tiny}
          local~x: {source: builtin:tiny}
          web: {source: "https://example.com/m.gguf"}
          hf: {source: "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/q4.gguf"}
          typ: {source: builtin:tiny, type: chat, n_ctx: big}
          tmp: {source: builtin:tiny, temperature: 0.5}
          many: {source: builtin:tiny, replicas: 65}
          wide: {source: builtin:tiny, parallel: 65}
          none: {source: builtin:tiny, parallel: 0}
        """
    )
    assert problems == {
        "description": "must be a string or null, got 5",
        "default_model": "'embed' is an embeddings model; the default model must be an llm model; the llm models are: story, web, hf, tmp, many, wide, none",
        "memory_budget_mb": "must be a number > 0 or null, got -1",
        "routing": "unknown key (did you mean 'routes'?)",
        "models.story.n_ctxx": "unknown key (did you mean 'n_ctx'?)",
        "models.story.replicas": "must be an integer between 1 and 64, got 0",
        "models.story.always_ready": "must be true or false, got 'yes'",
        "models.story.params.top_k": "unknown key (expected one of: temperature, max_tokens, n_threads, n_gpu_layers, chat_format)",
        "models.story.params.temperature": "must be a number between 0 and 2, got 'hot'",
        "models.story.params.n_threads": "must be an integer >= 1 or null, got 0",
        "models.bad name": "a model name uses letters, digits, '.', '_' and '-', starting with a letter or digit; got 'bad name'",
        "models.local~x": "a model name must not contain '~' (it separates service and model, as in local~localx)",
        "models.web.source": f"'https://example.com/m.gguf': {DOWNLOADS_UNSUPPORTED}",
        "models.hf.source": f"'hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/q4.gguf': {DOWNLOADS_UNSUPPORTED}",
        "models.typ.type": "must be one of llm, embeddings, got 'chat'",
        "models.typ.n_ctx": "must be an integer >= 16, got 'big'",
        "models.tmp.temperature": "unknown key here (did you mean 'models.tmp.params.temperature'?)",
        "models.many.replicas": "must be an integer between 1 and 64, got 65",
        "models.wide.parallel": "must be an integer between 1 and 64 or null, got 65",
        "models.none.parallel": "must be an integer between 1 and 64 or null, got 0",
    }


def test_error_text_names_the_file_and_key(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "story.yaml", MINIMAL.replace("source: builtin:tiny", "source: builtin:tiny\n        replicas: 0"))
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert str(exc.value) == f"{path}: models.story.replicas: must be an integer between 1 and 64, got 0"


def test_default_model_missing() -> None:
    problems = problems_of(
        """
        models:
          story: {source: builtin:tiny}
          embed: {source: builtin:tiny, type: embeddings}
        """
    )
    assert problems == {"default_model": "is required: the llm model served when a request names none (one of: story)"}


def test_default_model_names_no_model() -> None:
    problems = problems_of(MINIMAL.replace("default_model: story", "default_model: stroy"))
    assert problems == {"default_model": "'stroy' is not a model of this profile (did you mean 'story'? the models are: story)"}


def test_default_model_not_llm_and_no_llm_at_all() -> None:
    problems = problems_of(
        """
        default_model: embed
        models:
          embed: {source: builtin:tiny, type: embeddings}
        """
    )
    assert problems == {
        "default_model": "'embed' is an embeddings model; the default model must be an llm model; the profile has no llm model"
    }


def test_default_model_naming_an_invalid_model_reports_only_that_model() -> None:
    problems = problems_of(MINIMAL.replace("source: builtin:tiny", "source: builtin:tiny\n        n_ctx: 8"))
    assert problems == {"models.story.n_ctx": "must be an integer >= 16, got 8"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("default", "'default' is reserved: requests use it to mean the profile's default model"),
        ("-x", "a model name uses letters, digits, '.', '_' and '-', starting with a letter or digit; got '-x'"),
        ("a/b", "a model name uses letters, digits, '.', '_' and '-', starting with a letter or digit; got 'a/b'"),
        ("a~b", "a model name must not contain '~' (it separates service and model, as in local~ab)"),
        ("1.5", "a model name must be a string (letters, digits, '.', '_' and '-', starting with a letter or digit), got 1.5; quote it"),
    ],
)
def test_bad_model_names(name: str, message: str) -> None:
    text = f"""
        default_model: story
        models:
          story: {{source: builtin:tiny}}
          {name}: {{source: builtin:tiny}}
    """
    assert problems_of(text) == {f"models.{name}": message}


def test_good_model_names() -> None:
    p = parse_yaml(
        """
        default_model: Qwen2.5-0.5B_instruct
        models:
          Qwen2.5-0.5B_instruct: {source: builtin:tiny}
          "7b": {source: builtin:tiny}
        """
    )
    assert list(p.models) == ["Qwen2.5-0.5B_instruct", "7b"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("http://example.com/m.gguf", f"'http://example.com/m.gguf': {DOWNLOADS_UNSUPPORTED}"),
        ("HTTPS://example.com/m.gguf", f"'HTTPS://example.com/m.gguf': {DOWNLOADS_UNSUPPORTED}"),
        ("hf://org/repo/m.gguf", f"'hf://org/repo/m.gguf': {DOWNLOADS_UNSUPPORTED}"),
        ("s3://bucket/m.gguf", "unknown source scheme 's3://'; give 'builtin:tiny' or a path to a .gguf file"),
        ("builtin:huge", "unknown builtin model 'builtin:huge'; the only one is 'builtin:tiny'"),
        ("''", "must be a non-empty string, got ''"),
        ("null", "must be a non-empty string, got null"),
        ("[a]", "must be a non-empty string, got a list"),
    ],
)
def test_bad_sources(source: str, message: str) -> None:
    assert problems_of(MINIMAL.replace("builtin:tiny", source)) == {"models.story.source": message}


def test_source_is_required() -> None:
    problems = problems_of(
        """
        default_model: story
        models:
          story: {n_ctx: 512}
        """
    )
    assert problems == {"models.story.source": "is required: builtin:tiny or the path of a .gguf file"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", {"": "the top level must be a mapping of keys to values, got a list"}),
        ("default_model: story\nmodels: {}", {"models": "must map at least one model name to a model, got an empty mapping"}),
        ("default_model: story\nmodels:", {"models": "must map at least one model name to a model, got an empty mapping"}),
        ("default_model: story\nmodels: [story]", {"models": "must map at least one model name to a model, got a list"}),
        ("default_model: story", {"models": "is required: a mapping of model names to models"}),
        (
            "default_model: story\nmodels: {story: builtin:tiny}",
            {"models.story": "must be a mapping of keys to values, got 'builtin:tiny'"},
        ),
        (
            "default_model: story\nmodels: {story: {source: builtin:tiny, params: 3}}",
            {"models.story.params": "must be a mapping of keys to values, got 3"},
        ),
    ],
)
def test_shapes(text: str, expected: dict[str, str]) -> None:
    assert problems_of(text) == expected


def test_config_yaml_habits_get_hints() -> None:
    problems = problems_of(
        """
        name: mine
        default: story
        n_ctx: 4096
        temperature: 0.2
        models:
          story:
            model: /x.gguf
            model_name: story
            keep_alive: 10
            params: {n_ctx: 512, replicas: 2}
        """
    )
    assert problems == {
        "name": "unknown key (a profile's name is its file name)",
        "default": "unknown key (did you mean 'default_model'?)",
        "n_ctx": "unknown key here (did you mean 'models.<name>.n_ctx'?)",
        "temperature": "unknown key here (did you mean 'models.<name>.params.temperature'?)",
        "models.story.model": "unknown key (did you mean 'source'?)",
        "models.story.model_name": "unknown key (a model's name is its key under models)",
        "models.story.keep_alive": "unknown key (did you mean 'keep_alive_sec'?)",
        "models.story.params.n_ctx": "unknown key here (did you mean 'models.story.n_ctx'?)",
        "models.story.params.replicas": "unknown key here (did you mean 'models.story.replicas'?)",
        "models.story.source": "is required: builtin:tiny or the path of a .gguf file",
        "default_model": "is required: the llm model served when a request names none (one of: story)",
    }


def test_more_ranges() -> None:
    problems = problems_of(
        """
        default_model: story
        models:
          story:
            source: builtin:tiny
            keep_alive_sec: 0
            params: {max_tokens: 0, n_gpu_layers: -2, chat_format: ""}
        """
    )
    assert problems == {
        "models.story.keep_alive_sec": "must be a number > 0, got 0",
        "models.story.params.max_tokens": "must be an integer between 1 and 1048576, got 0",
        "models.story.params.n_gpu_layers": "must be an integer >= -1, got -2",
        "models.story.params.chat_format": "must be a non-empty string or null, got ''",
    }


def test_profile_file_name_must_be_a_name(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "my profile.yaml", MINIMAL)
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert [str(p) for p in exc.value.problems] == [
        "the profile name 'my profile' (the file name) must use letters, digits, '.', '_' and '-', starting with a letter or digit"
    ]


def test_yaml_errors_have_lines(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "dup.yaml", MINIMAL + "    default_model: other\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    (problem,) = exc.value.problems
    assert problem.line == 6 and "duplicate key 'default_model' (first defined at line 2)" in problem.message
    path = write_profile(tmp_path, "syntax.yaml", "models: [\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert exc.value.problems[0].message.startswith("invalid YAML at line")


def test_relative_and_home_paths(tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "profiles"
    path = write_profile(
        folder,
        "rel.yaml",
        """
        default_model: a
        models:
          a: {source: models/a.gguf}
          b: {source: ~/b.gguf}
          c: {source: /abs/c.gguf}
          d: {source: ../d.gguf}
        """,
    )
    p = load_profile(path)
    assert p.models["a"].path == folder / "models" / "a.gguf"
    assert p.models["b"].path == home / "b.gguf"
    assert p.models["c"].path == Path("/abs/c.gguf")
    assert p.models["d"].path == folder / ".." / "d.gguf"
    assert p.models["a"].source == str(folder / "models" / "a.gguf")  # resolved, like llm.model
    assert p.models["b"].source == str(home / "b.gguf")


def test_problem_type() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_yaml("default_model: 3\nmodels: {a: {source: builtin:tiny}}")
    assert exc.value.problems == [ConfigProblem("default_model", "must be a non-empty string, got 3")]


# ------------------------------------------------------------------- implicit profile


def test_profile_from_default_config() -> None:
    p = profile_from_config(Config())
    assert p.name == "default" and p.source is None and p.memory_budget_mb is None
    assert p.default_model == "msting-tiny"
    m = p.default
    assert m == ProfileModel(source="builtin:tiny", name="msting-tiny")
    assert m.always_ready and m.is_builtin


def test_profile_from_config_llm_section(tmp_path: Path) -> None:
    source = tmp_path / "config.yaml"
    cfg = parse_config(
        {
            "llm": {
                "model": "models/story.gguf",
                "model_name": "story",
                "temperature": 0.2,
                "max_tokens": 99,
                "n_ctx": 1024,
                "n_threads": 3,
                "n_gpu_layers": -1,
                "replicas": 2,
                "parallel": 4,
                "chat_format": "chatml",
            }
        },
        source,
    )
    p = profile_from_config(cfg)
    assert p.source == source and p.default_model == "story" and list(p.models) == ["story"]
    m = p.models["story"]
    assert m.source == str(tmp_path / "models" / "story.gguf")
    assert m.path == tmp_path / "models" / "story.gguf"
    assert (m.type, m.n_ctx, m.replicas, m.parallel, m.always_ready) == ("llm", 1024, 2, 4, True)
    assert m.params == ModelParams(temperature=0.2, max_tokens=99, n_threads=3, n_gpu_layers=-1, chat_format="chatml")


def test_profile_from_config_name_is_the_file_stem() -> None:
    cfg = parse_config({"llm": {"model": "/m/qwen2.5-0.5b.gguf"}}, None)
    p = profile_from_config(cfg)
    assert p.default_model == "qwen2.5-0.5b" and p.default.path == Path("/m/qwen2.5-0.5b.gguf")


# ------------------------------------------------------------------------------- docs


def _readme_profiles_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Profiles\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_example_parses(home: Path) -> None:
    section = _readme_profiles_section()
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    p = parse_yaml(block, name="readme")
    assert p.default_model == "qwen" and p.memory_budget_mb == 2048
    assert not p.models["msting-tiny"].always_ready


def test_readme_documents_every_key() -> None:
    from dataclasses import fields

    section = _readme_profiles_section()
    keys = ["description", "default_model", "memory_budget_mb", "models"]
    for f in fields(ProfileModel):
        if "spec" in f.metadata:
            keys.append(f"models.<name>.{f.name}")
    keys += [f"models.<name>.params.{f.name}" for f in fields(ModelParams)]
    for key in keys:
        assert f"| `{key}` |" in section, f"README's profile table lacks {key}"
