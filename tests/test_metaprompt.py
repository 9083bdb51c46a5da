"""The metaprompting backend: the checks on LLM text, and a real run against llama-cpp-python's server."""

import pytest
from conftest import free_port

from ecommerce_slm.generator import Spec
from ecommerce_slm.metaprompt import EndpointError, MetapromptWriter, check_text, detect_language, language_markers
from stages.synthesize import DataConfig, synthesize


@pytest.fixture(scope="module")
def markers(phrases, catalog):
    return language_markers(phrases, catalog)


def spec(**kw):
    base = dict(language="hr", action="add", product="Toothpaste", quantity=2, quantity_style="words", style="style.00")
    return Spec(**{**base, **kw})


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Možeš li dodati dvije paste za zube u košaricu?", None),
        ("Molim te dodaj 2 pste za zube 🙏", None),  # a typo in the product still names it
        ("Can you add two toothpastes to my cart?", "language"),
        ("Možeš li dodati dvije četkice za zube u košaricu?", "product"),
        ("Možeš li dodati tri paste za zube u košaricu?", "quantity"),
        ("Dodaj 2 paste za zube i 3 šampona", "quantity"),
        ("", "empty"),
        ("Dodaj dvije paste za zube\nHvala", "form"),
    ],
)
def test_check_text(text, kind, catalog, markers):
    failed = check_text(text, spec(), catalog, markers)
    assert (failed[0] if failed else None) == kind


def test_implicit_one_needs_no_number(catalog, markers):
    s = spec(language="es", quantity=1, quantity_style="implicit", product="Shampoo")
    assert check_text("¿Me pones el champú en el carrito, porfa?", s, catalog, markers) is None
    assert check_text("Pon 3 champús en el carrito", s, catalog, markers)[0] == "quantity"


def test_language_detection(markers):
    assert detect_language("Quiero quitar la mochila del carrito", markers) == "es"
    assert detect_language("Izbaci ruksak iz košarice molim", markers) == "hr"
    assert detect_language("Please remove the backpack from my cart", markers) == "en"


def test_openai_endpoint_needs_a_key(catalog, phrases, vocab, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = DataConfig.from_dict({"backend": "metaprompt"}).metaprompt
    with pytest.raises(EndpointError, match="OPENAI_API_KEY"):
        MetapromptWriter(cfg, catalog, phrases, {}, vocab)


def test_unreachable_endpoint_fails_loudly(catalog, tmp_path):
    port = free_port()  # nothing listens here
    cfg = DataConfig.from_dict(
        {
            "backend": "metaprompt",
            "languages": ["en"],
            "n_examples": 2,
            "n_eval": 1,
            "metaprompt": {
                "base_url": f"http://127.0.0.1:{port}/v1",
                "max_attempts": 2,
                "backoff_seconds": 0.01,
                "cache_dir": str(tmp_path / "cache"),
            },
        }
    )
    with pytest.raises(EndpointError, match="no answer after 2 attempts"):
        synthesize(cfg, catalog)


@pytest.mark.slow
def test_metaprompt_against_local_server(local_server, catalog, tmp_path):
    cfg = DataConfig.from_dict(
        {
            "backend": "metaprompt",
            "languages": ["en"],
            "n_examples": 4,
            "n_eval": 2,
            "metaprompt": {
                "base_url": local_server,
                "model": "smollm2",
                "temperature": 0.8,
                "max_attempts": 4,
                "cache_dir": str(tmp_path / "cache"),
            },
        }
    )
    splits, stats = synthesize(cfg, catalog)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "validation": 1, "eval": 2}
    assert stats["metaprompt"]["requests_sent"] >= 6
    from ecommerce_slm.metaprompt import STYLE_IDS

    for rows in splits.values():
        for row in rows:
            assert row["style"] in STYLE_IDS and row["text"]
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == stats["metaprompt"]["requests_answered"] <= stats["metaprompt"]["requests_sent"]
    # a rerun is answered from the cache: nothing sent, same data
    again, again_stats = synthesize(cfg, catalog)
    assert again == splits
    assert again_stats["metaprompt"]["requests_sent"] == 0
    assert again_stats["metaprompt"]["cache_hits"] == len(cached)
