"""What each model file is (`details`), read from its GGUF header by the real daemon and
shown by /v1/models, /llm/models and `msting llm models`."""

from __future__ import annotations

import json

from msting.models.capabilities import capabilities_of


def test_details_of_the_builtin_model_everywhere(daemon_home):
    daemon_home.start()
    path = daemon_home.home / "data" / "models" / "msting-tiny.gguf"
    with daemon_home.tcp_client() as c:
        listed = c.get("/v1/models").json()["data"]
        one = c.get("/v1/models/msting-tiny").json()
    with daemon_home.client() as c:
        llm = c.get("/llm/models").json()["data"]
        stub = c.get("/llm/services/stub/models").json()["data"]
    assert [m["id"] for m in listed] == ["msting-tiny"]
    details = listed[0]["details"]
    expected = capabilities_of(path if path.exists() else next(daemon_home.home.rglob("msting-tiny.gguf")))
    assert details == one["details"] == expected
    assert details["quantization"] == "F32" and details["instructed"] is True and details["type"] == "llm"
    # the endpoint's capabilities keep their own meaning (null: the provider's own)
    assert listed[0]["capabilities"] is None
    local = [m for m in llm if m["service"] == "local"]
    assert [m["details"] for m in local] == [expected]
    assert stub and all(m["details"] is None for m in stub)  # no file behind the stub

    body, _ = daemon_home.cli_json("llm", "models", "--json")
    assert body["models"][0]["details"] == expected
    text = daemon_home.cli("llm", "models", check=True).stdout
    row = next(line for line in text.splitlines() if line.startswith("msting-tiny"))
    assert "F32" in row and "chat" in row


def test_details_of_a_model_file_named_by_path(daemon_home, stories_model_path):
    daemon_home.write_config({"llm": {"model": str(stories_model_path)}})
    daemon_home.start()
    with daemon_home.client() as c:
        (model,) = [m for m in c.get("/llm/models").json()["data"] if m["service"] == "local"]
    assert model["details"] == capabilities_of(stories_model_path)
    assert model["details"]["n_params"] == 292_800 and model["details"]["instructed"] is False
    out = json.loads(daemon_home.cli("llm", "models", "--json", check=True).stdout)
    assert out["models"][0]["details"]["arch"] == "llama"
