"""An API key reaches only the host it is meant for, and never a file: a sentinel key through eval_api and
the metaprompt backend, against the fake OpenAI-compatible server of the fault catalogue on 127.0.0.1."""

import pytest

from tools.fault_catalogue import FakeEndpoint, make_project, set_param

SENTINEL = "sk-SENTINEL-7f3c9e21b4"


@pytest.fixture
def endpoint():
    with FakeEndpoint() as fake:
        yield fake


def files_holding(root, text):
    return [str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.fixture
def project(tmp_path, monkeypatch, endpoint):
    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    set_param(root, "eval_api.base_url", endpoint.url)
    set_param(root, "eval_api.max_attempts", 1)
    return root


def test_the_openai_key_is_not_sent_to_another_host(project, endpoint, monkeypatch):
    from stages.eval_api import main

    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    assert main(["local-model"]) == 0
    assert endpoint.authorizations and not any(SENTINEL in a for a in endpoint.authorizations)
    assert files_holding(project, SENTINEL) == []


def test_a_key_named_for_the_host_is_sent_but_never_written(project, endpoint, monkeypatch):
    from stages.eval_api import main

    monkeypatch.setenv("LOCAL_SERVER_KEY", SENTINEL)
    set_param(project, "eval_api.api_key_env", "LOCAL_SERVER_KEY")
    assert main(["local-model"]) == 0
    assert set(endpoint.authorizations) == {f"Bearer {SENTINEL}"}
    assert files_holding(project, SENTINEL) == []
    assert (project / "metrics" / "eval" / "api-local-model.json").exists()


def test_the_metaprompt_backend_keeps_its_key_out_of_the_cache(project, endpoint, monkeypatch):
    from stages.synthesize import main

    monkeypatch.setenv("LOCAL_SERVER_KEY", SENTINEL)
    for key, value in {
        "backend": "metaprompt",
        "n_examples": 2,
        "n_eval": 1,
        "metaprompt.base_url": endpoint.url,
        "metaprompt.api_key_env": "LOCAL_SERVER_KEY",
        "metaprompt.model": "local-model",
        "metaprompt.max_attempts": 1,
        "metaprompt.cache_dir": "cache",
    }.items():
        set_param(project, f"data.{key}", value)
    main([])  # the fake answers JSON, never a request text: rows are rejected; what matters is what was written
    assert set(endpoint.authorizations) == {f"Bearer {SENTINEL}"}
    assert list((project / "cache").rglob("*.json")), "the cache holds the requests"
    assert files_holding(project, SENTINEL) == []
