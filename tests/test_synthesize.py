import json
import math
import random

import pytest

from ecommerce_slm.generator import quantity_weights, template_ids
from ecommerce_slm.noise import NOISE_TYPES, add_noise, typo
from stages.synthesize import DataConfig, DataError, load_rows, synthesize


def small_config(**overrides):
    values = {"n_examples": 600, "n_eval": 120, **overrides}
    return DataConfig.from_dict(values)


@pytest.fixture(scope="module")
def default_data(catalog):
    return synthesize(DataConfig(), catalog)


def test_same_seed_same_data_other_seed_other_data(catalog):
    first, _ = synthesize(small_config(), catalog)
    again, _ = synthesize(small_config(), catalog)
    other, _ = synthesize(small_config(seed=7), catalog)
    assert first == again
    assert [r["text"] for r in first["train"]] != [r["text"] for r in other["train"]]


def test_default_sizes_languages_and_actions(default_data):
    splits, stats = default_data
    assert {k: len(v) for k, v in splits.items()} == {"train": 2700, "validation": 300, "eval": 300}
    for rows in splits.values():
        languages = {r["language"] for r in rows}
        assert languages == {"en", "hr", "es"}
        assert {r["action"] for r in rows} == {"add", "remove"}
    assert stats["n_products"] >= 60


def test_every_row_is_valid(default_data, catalog):
    from ecommerce_slm.task import validate_row

    for rows in default_data[0].values():
        for row in rows:
            validate_row(row, set(catalog.names))


def test_heldout_templates_never_reach_train(default_data, templates):
    splits, stats = default_data
    train_styles = {r["style"] for r in splits["train"] + splits["validation"]}
    eval_styles = {r["style"] for r in splits["eval"]}
    assert train_styles.isdisjoint(eval_styles)
    all_ids = {t for lang in ("en", "hr", "es") for a in ("add", "remove") for t in template_ids(templates, lang, a)}
    assert len(all_ids) == 180 and train_styles | eval_styles <= all_ids
    train_texts = {r["text"].casefold() for r in splits["train"] + splits["validation"]}
    assert not any(r["text"].casefold() in train_texts for r in splits["eval"])
    assert stats["heldout"]["eval_rows_from_heldout"] == 1.0
    assert stats["heldout"]["train_rows_from_heldout"] == 0.0
    assert stats["heldout"]["heldout_share"] == pytest.approx(0.2)


def test_at_least_25_templates_per_language_and_action(templates):
    for language, actions in templates.items():
        for action, items in actions.items():
            assert len(set(items)) >= 25, (language, action)


def test_each_noise_type_appears_at_its_rate(catalog):
    rates = {
        "typo": 0.3,
        "slang": 0.2,
        "greeting": 0.25,
        "emoji": 0.15,
        "brand": 0.1,
        "code_switch": 0.35,
        "casing": 0.05,
    }
    splits, stats = synthesize(small_config(n_examples=3000, noise=rates), catalog)
    rows = splits["train"]
    for kind in NOISE_TYPES:
        eligible = [r for r in rows if kind != "code_switch" or r["language"] != "en"]
        observed = sum(kind in r["noise"] for r in eligible) / len(eligible)
        # casing can lower-case a text that a template already wrote in lower case: a no-op is not counted
        tolerance = 4 * math.sqrt(rates[kind] * (1 - rates[kind]) / len(eligible)) + (0.02 if kind == "casing" else 0)
        assert abs(observed - rates[kind]) < tolerance, (kind, observed)
    assert not any("code_switch" in r["noise"] for r in rows if r["language"] == "en")


def test_zero_noise_means_clean_text(catalog):
    zero = {k: 0.0 for k in NOISE_TYPES}
    splits, stats = synthesize(small_config(noise=zero), catalog)
    assert all(r["noise"] == [] for r in splits["train"])
    assert stats["any_noise_rate"] == 0


def test_noise_injectors_do_what_they_say(vocab):
    rng = random.Random(0)
    text = "Please add 12 lip balms to my basket."
    for _ in range(50):
        noisy = typo(text, rng)
        assert noisy != text and "12" in noisy and abs(len(noisy) - len(text)) <= 2
    noisy, applied = add_noise("Pon 2 champús en el carrito", "es", {k: 1.0 for k in NOISE_TYPES}, vocab, rng)
    assert applied == list(NOISE_TYPES)
    assert any(e in noisy for e in vocab.emoji)


def test_quantities_mostly_small_with_a_long_tail(default_data):
    rows = default_data[0]["train"]
    quantities = [r["quantity"] for r in rows]
    assert 0.5 < sum(q <= 3 for q in quantities) / len(quantities) < 0.8
    assert max(quantities) >= 40
    styles = {r["quantity_style"] for r in rows}
    assert styles == {"implicit", "digits", "words"}
    implicit = [r for r in rows if r["quantity_style"] == "implicit"]
    assert all(r["quantity"] == 1 and not any(c.isdigit() for c in r["text"]) for r in implicit)
    assert any(
        "a dozen" in r["text"].lower() or "tucet" in r["text"].lower() or "docena" in r["text"].lower() for r in rows
    )


def test_quantity_weights_normalised_and_decreasing():
    from ecommerce_slm.generator import QuantityConfig

    w = quantity_weights(QuantityConfig())
    assert sum(w) == pytest.approx(1.0)
    assert w[0] > w[1] > w[2] > w[3]


def test_stats_report_counts_and_duplicates(default_data):
    stats = default_data[1]
    assert stats["rows"] == {"train": 2700, "validation": 300, "eval": 300}
    assert sum(stats["languages"]["train"].values()) == 2700
    assert 0 <= stats["duplicate_rate"] < 0.05
    assert sum(stats["products"].values()) == 2700


# --- bring your own data -------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"text": "add two shampoos", "action": "add", "product": "Shampoo", "quantity": 2}


@pytest.mark.parametrize(
    "bad, field",
    [
        ({**GOOD, "text": "  "}, "text"),
        ({**GOOD, "action": "buy"}, "action"),
        ({**GOOD, "product": "Soap"}, "product"),
        ({**GOOD, "quantity": -1}, "quantity"),
    ],
)
def test_bad_row_stops_with_file_line_and_field(tmp_path, catalog, bad, field):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(DataError) as err:
        load_rows(str(path), catalog, "error")
    assert str(err.value).startswith(f"{path}:3: {field}: expected")


def test_bad_rows_dropped_and_counted(tmp_path, catalog):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD, {**GOOD, "quantity": 0}, GOOD, {**GOOD, "action": "x"}])
    rows, dropped = load_rows(str(path), catalog, "drop")
    assert len(rows) == 2 and len(dropped) == 2 and dropped[0].startswith(f"{path}:2: quantity")


def test_malformed_json_line_is_located(tmp_path, catalog):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(DataError, match=r"mine.jsonl:2: row: expected one JSON object per line"):
        load_rows(str(path), catalog, "error")


def test_csv_source_with_line_numbers(tmp_path, catalog):
    path = tmp_path / "mine.csv"
    path.write_text("text,action,product,quantity\nadd 2 shampoos,add,Shampoo,2\nbad,add,Shampoo,zero\n")
    with pytest.raises(DataError, match=r"mine.csv:3: quantity: expected an integer in 1..9999, got 'zero'"):
        load_rows(str(path), catalog, "error")


def test_source_file_replaces_synthesis(tmp_path, catalog):
    rows = [{**GOOD, "text": f"add {i} shampoos", "quantity": i} for i in range(1, 21)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    splits, stats = synthesize(small_config(source=str(path), n_eval=30), catalog)
    assert len(splits["train"]) == 18 and len(splits["validation"]) == 2
    assert {r["text"] for r in splits["train"] + splits["validation"]} == {r["text"] for r in rows}
    assert len(splits["eval"]) == 30 and stats["backend"] == "source"


def test_datasets_folder_source(tmp_path, catalog):
    import datasets

    rows = [{**GOOD, "text": f"add {i} shampoos", "quantity": i} for i in range(1, 11)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    loaded, dropped = load_rows(str(tmp_path / "ds"), catalog, "error")
    assert [r["quantity"] for r in loaded] == list(range(1, 11)) and not dropped


def test_missing_source_file(tmp_path, catalog):
    with pytest.raises(DataError, match="data file not found"):
        load_rows(str(tmp_path / "none.jsonl"), catalog, "error")


def test_metrics_summary_stays_compact(default_data):
    from stages.synthesize import compact_stats as summary

    compact = summary(default_data[1])
    assert "products" not in compact and compact["n_products"] >= 60
    assert compact["languages"] == {"en": 900, "es": 900, "hr": 900}
    assert set(compact["noise_rates"]) == set(NOISE_TYPES)


def test_noise_rates_count_eligible_rows_only():
    from stages.synthesize import dataset_stats

    def row(language, noise):
        return {
            "text": f"t{language}{noise}",
            "action": "add",
            "product": "Soap",
            "quantity": 1,
            "language": language,
            "noise": noise,
            "style": "s",
        }

    train = [row("en", ["typo"]), row("en", ["code_switch"]), row("hr", ["code_switch"]), row("es", [])]
    styles, heldout = {("en", "add"): ["s"]}, {("en", "add"): ["h"]}
    stats = dataset_stats({"train": train, "validation": [], "eval": []}, {}, {}, styles, heldout)
    assert stats["noise_rates"]["typo"] == 0.25  # 1 of 4 rows
    assert stats["noise_rates"]["code_switch"] == 0.5  # 1 of the 2 non-English rows; English never switches
    assert stats["any_noise_rate"] == 0.75
