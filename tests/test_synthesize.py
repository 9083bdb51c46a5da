import json
import math
import random
import re

import pytest
import yaml

from ecommerce_slm.compose import load_slots, split_slots
from ecommerce_slm.generator import GenerationError, language_order, quantity_weights
from ecommerce_slm.language import CASES, render_item
from ecommerce_slm.noise import NOISE_TYPES, NOT_IN_ENGLISH, add_noise, typo
from ecommerce_slm.params import ParamError
from ecommerce_slm.paths import SLOTS_FILE
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


def test_equal_language_weights_are_the_papers_cycle():
    order = language_order(["en", "hr", "es"], {})
    assert [next(order) for _ in range(9)] == ["en", "hr", "es"] * 3
    order = language_order(["en", "hr", "es"], {"en": 2, "hr": 2, "es": 2})
    assert [next(order) for _ in range(6)] == ["en", "hr", "es"] * 2


def test_language_weights_hold_in_every_prefix():
    order = language_order(["en", "hr", "es"], {"hr": 2, "es": 1.5})  # en: 1 by default
    seen = {"en": 0, "hr": 0, "es": 0}
    for step in range(1, 901):
        seen[next(order)] += 1
        for language, weight in {"en": 1, "hr": 2, "es": 1.5}.items():
            assert abs(seen[language] - step * weight / 4.5) < 1.0, (step, seen)


def test_language_weights_change_training_only(catalog):
    plain, _ = synthesize(small_config(), catalog)
    weighted, stats = synthesize(small_config(language_weights={"hr": 3}), catalog)
    train = weighted["train"] + weighted["validation"]
    assert sum(r["language"] == "hr" for r in train) == 360  # 3 of every 5 of the 600
    assert [r["language"] for r in weighted["eval"]] == [r["language"] for r in plain["eval"]]
    assert stats["languages"]["eval"] == {"en": 40, "es": 40, "hr": 40}


@pytest.mark.parametrize(
    "weights, expected",
    [
        ({"de": 1}, "data.language_weights: expected weights only for languages in data.languages"),
        ({"hr": 0}, "data.language_weights: expected positive numbers"),
        ({"hr": "2"}, "data.language_weights: expected positive numbers"),
        ([2, 1, 1], "data.language_weights: expected a mapping"),
    ],
)
def test_bad_language_weights_are_named(weights, expected):
    with pytest.raises(ParamError, match=re.escape(expected)):
        small_config(language_weights=weights)


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


def test_heldout_slots_never_reach_train(default_data, slots, catalog):
    splits, stats = default_data
    cfg = DataConfig()
    split = split_slots(slots, catalog, cfg.languages, cfg.heldout_share, cfg.seed)
    trained = splits["train"] + splits["validation"]
    for row in trained:
        assert row["style"] not in split.heldout["frame"]
        assert row["expression"] not in split.heldout["expression"]
        assert row["product_form"] not in split.heldout["synonym"]
        assert row["unseen"] == []
    assert all(r["style"] in split.heldout["frame"] for r in splits["eval"])
    for slot in ("expression", "synonym"):  # the eval rows that use a slot training never saw say so
        marked = [r for r in splits["eval"] if slot in r["unseen"]]
        field = "expression" if slot == "expression" else "product_form"
        assert marked and all(r[field] in split.heldout[slot] for r in marked)
    train_texts = {r["text"].casefold() for r in trained}
    assert not any(r["text"].casefold() in train_texts for r in splits["eval"])
    heldout = stats["heldout"]
    assert heldout["train_rows_with_heldout_slot"] == 0 and heldout["eval_texts_in_train"] == 0
    assert all(heldout["slots"][slot]["share"] >= 0.15 for slot in ("frame", "expression", "synonym"))
    frames = heldout["slots"]["frame"]  # each frame counted once, not once per action it serves
    assert (heldout["styles_total"], heldout["styles_heldout"]) == (frames["total"], frames["heldout"])
    assert heldout["eval_rows_unseen"]["expression"] > 0.3 * len(splits["eval"])


def test_slots_are_rich_enough_to_compose_from(slots):
    for language in ("en", "hr", "es"):
        assert len(slots.frames[language]) >= 25
        for action in ("add", "remove"):
            assert len([e for e in slots.expressions[language] if e.action == action]) >= 30, (language, action)


def test_frame_words_are_no_action_cue(slots):
    """A frame's words ("actually", "ipak", "he cambiado de idea") say nothing about the action; where one also
    occurs inside expressions, it must occur in both actions' expressions, or the model learns it as the verb
    ("ipak" only in remove statements: "Ipak ubaci 1 šampon" read as remove)."""

    def words(text):
        return set(re.findall(r"[^\W\d_]+", re.sub(r"\{\w+\}", " ", text).casefold()))

    for language, frames in slots.frames.items():
        frame_words = set().union(*(words(f.text) for f in frames))
        used_by = {
            action: set().union(
                *(words(e.imp) | words(e.inf) for e in slots.expressions[language] if e.action == action)
            )
            for action in ("add", "remove")
        }
        one_sided = {w for w in frame_words if (w in used_by["add"]) != (w in used_by["remove"])}
        assert not one_sided, (language, sorted(one_sided))


def test_every_row_answer_matches_the_slots_it_was_built_from(default_data, slots, catalog):
    expressions = {e.id: e for language in slots.expressions for e in slots.expressions[language]}
    for split_rows in default_data[0].values():
        for row in split_rows:
            assert expressions[row["expression"]].action == row["action"], row
            product, language, index = row["product_form"].split("|")
            assert product == row["product"] and language == row["language"]
            forms = catalog[product].forms[language][int(index)]
            case = expressions[row["expression"]].case
            assert read_quantity(language, row["item"], forms, case) == row["quantity"], row
            if not set(row["noise"]) & {"typo", "ascii", "casing"}:
                assert row["item"].casefold() in row["text"].casefold(), row


def test_each_noise_type_appears_at_its_rate(catalog):
    rates = {
        "typo": 0.3,
        "slang": 0.2,
        "greeting": 0.25,
        "emoji": 0.15,
        "brand": 0.1,
        "code_switch": 0.35,
        "ascii": 0.3,
        "casing": 0.05,
    }
    splits, stats = synthesize(small_config(n_examples=3000, noise=rates), catalog)
    rows = splits["train"]
    for kind in NOISE_TYPES:
        eligible = [r for r in rows if kind not in NOT_IN_ENGLISH or r["language"] != "en"]
        observed = sum(kind in r["noise"] for r in eligible) / len(eligible)
        tolerance = 4 * math.sqrt(rates[kind] * (1 - rates[kind]) / len(eligible))
        if kind == "ascii":  # a request with no diacritics to drop is left as it is, and not counted
            assert 0.5 * rates[kind] < observed < rates[kind] + tolerance, (kind, observed)
            continue
        # casing can lower-case a text that is already lower case: a no-op is not counted
        assert abs(observed - rates[kind]) < tolerance + (0.02 if kind == "casing" else 0), (kind, observed)
    assert not any(set(NOT_IN_ENGLISH) & set(r["noise"]) for r in rows if r["language"] == "en")


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
    noisy, applied = add_noise(
        "Pon 2 champús en el carrito, añádelos ya", "es", {k: 1.0 for k in NOISE_TYPES}, vocab, rng
    )
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


def test_training_writes_every_number_word_and_the_eval_set_keeps_the_skewed_draw(default_data, catalog):
    splits, stats = default_data
    assert stats["quantity"]["words_covered"] == {"en": 50, "es": 50, "hr": 50}
    skewed, skewed_stats = synthesize(DataConfig.from_dict({"quantity": {"words_cover_share": 0.0}}), catalog)
    assert min(skewed_stats["quantity"]["words_covered"].values()) < 35  # the zipf draw alone leaves gaps
    assert [r["text"] for r in skewed["eval"]] == [r["text"] for r in splits["eval"]]
    words = [r for r in splits["train"] if r["quantity_style"] == "words"]
    assert sum(r["quantity"] > 20 for r in words) > 2 * sum(
        r["quantity"] > 20 for r in skewed["train"] if r["quantity_style"] == "words"
    )
    more, _ = synthesize(DataConfig.from_dict({"quantity": {"training_words_share": 0.6}}), catalog)
    assert [r["text"] for r in more["eval"]] == [r["text"] for r in splits["eval"]]
    assert sum(r["quantity_style"] == "words" for r in more["train"]) > 1.6 * len(words)


def test_plurals_with_no_number_are_training_only_and_one_item(default_data, catalog):
    """data.quantity.training_plural_share: a share of the training requests with no number name the
    product in the plural; the answer is one item, and the eval set's stream is untouched."""
    plain = default_data[0]  # the default share is 0: no plural anywhere
    assert not any(r["quantity_style"] == "plural" for r in plain["train"] + plain["eval"])
    plurals, _ = synthesize(DataConfig.from_dict({"quantity": {"training_plural_share": 0.3}}), catalog)
    assert [r["text"] for r in plurals["eval"]] == [r["text"] for r in plain["eval"]]  # the eval set never draws it
    plural = [r for r in plurals["train"] if r["quantity_style"] == "plural"]
    implicit = [r for r in plurals["train"] if r["quantity_style"] == "implicit"]
    assert 0.2 < len(plural) / (len(plural) + len(implicit)) < 0.4
    assert all(r["quantity"] == 1 and not any(c.isdigit() for c in r["item"]) for r in plural)
    assert {r["language"] for r in plural} == {"en", "hr", "es"}
    cases = {e.id: e.case for expressions in load_slots().expressions.values() for e in expressions}
    objects = [r for r in plural if r["language"] == "hr" and cases[r["expression"]] == "accusative"]
    assert len(objects) > 20
    for row in objects:  # Croatian objects in the accusative plural ("makni šampone"), pairs by their bare name
        _, _, index = row["product_form"].split("|")
        forms = catalog[row["product"]].forms["hr"][int(index)]
        assert row["item"] == (forms.bare or forms.plural), row
    for row in (r for r in plural if r["language"] == "hr" and cases[r["expression"]] == "nominative"):
        _, _, index = row["product_form"].split("|")  # a subject is written in the singular, and labelled so
        assert catalog[row["product"]].forms["hr"][int(index)].bare, row


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
    # languages cycle over the 3000 rows; the validation rows are the first 300, so train is about even
    assert set(compact["languages"]) == {"en", "es", "hr"} and sum(compact["languages"].values()) == 2700
    assert all(abs(n - 900) <= 10 for n in compact["languages"].values())
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


# --- quantity expressions: read back with number words written out here, not taken from language.py ---

_EN = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_HR = (
    "jedan dva tri četiri pet šest sedam osam devet deset jedanaest dvanaest trinaest četrnaest petnaest "
    "šesnaest sedamnaest osamnaest devetnaest"
).split()
_ES = (
    "uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis diecisiete "
    "dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco veintiséis veintisiete "
    "veintiocho veintinueve"
).split()
NUMBER_WORDS = {
    "en": {
        **{w: i for i, w in enumerate(_EN, 1)},
        **dict(zip("twenty thirty forty fifty".split(), (20, 30, 40, 50), strict=True)),
        "a dozen": 12,
        "half a dozen": 6,
        "a couple of": 2,
    },
    "hr": {
        **{w: i for i, w in enumerate(_HR, 1)},
        **dict(zip("dvadeset trideset četrdeset pedeset".split(), (20, 30, 40, 50), strict=True)),
        "jednu": 1,
        "jedna": 1,
        "jedno": 1,
        "dvije": 2,
        "tucet": 12,
    },
    "es": {
        **{w: i for i, w in enumerate(_ES, 1)},
        **dict(zip("treinta cuarenta cincuenta".split(), (30, 40, 50), strict=True)),
        "un": 1,
        "una": 1,
        "veintiún": 21,
        "veintiuna": 21,
        "una docena de": 12,
        "media docena de": 6,
        "un par de": 2,
    },
}


def read_quantity(language: str, item: str, forms, case: str = "accusative") -> int:
    """The quantity an item phrase states, and a check that the noun has the form that number (and case) needs."""
    words = NUMBER_WORDS[language]
    if found := re.search(r"(?<![\w])x?(\d+)x?(?![\w])", item):
        n = int(found[1])
    else:
        tokens = item.replace("-", " ").split()
        n, i = 0, 0
        pair = forms.one.startswith(("pair ", "par "))  # "un par de calcetines" is one pair, not two
        for size in (3, 2, 1):  # idioms first: "half a dozen", "a couple of"
            phrase = " ".join(tokens[:size])
            if phrase in words and not (pair and phrase in ("a couple of", "un par de")):
                n, i = words[phrase], size
                break
        while i < len(tokens) and tokens[i] in ("y",) + tuple(words):  # "twenty four", "treinta y dos"
            n += words.get(tokens[i], 0) if tokens[i] != "y" else 0
            i += 1
        if n == 0:
            return 1  # no number: one item ("the shampoo", "čarape", "unos calcetines")
    noun = {1: forms.one}.get(n) if language != "hr" else None
    if language == "hr":
        last = n % 10 if n % 100 not in (11, 12, 13, 14) else 0
        one = forms.nominative if case == "nominative" else forms.one
        noun = one if last == 1 else forms.few if last in (2, 3, 4) else forms.many
    elif n != 1:
        noun = forms.many
    bare = forms.bare.split(" ", 1)[-1] if language == "es" else forms.bare  # "los calcetines" -> "unos ..."
    assert noun in item or (n == 1 and bare and bare in item), (item, n)
    return n


@pytest.mark.parametrize("language", ["en", "hr", "es"])
def test_every_quantity_expression_maps_back_to_its_quantity(language, catalog):
    rng = random.Random(language)
    checked = 0
    for product in catalog.products:
        for forms in product.forms[language]:
            for n in range(1, 51):
                for style in ("digits", "words") + (("implicit", "plural") if n == 1 else ()):
                    for _ in range(3):  # digit shapes (3, 3x, x3) and idioms are drawn
                        case = rng.choice(CASES)
                        item = render_item(language, forms, n, style, rng.choice(["add", "remove"]), rng, case)
                        assert read_quantity(language, item, forms, case) == n, (item, n, case)
                        checked += 1
    assert checked > 10_000


def test_dev_set_is_drawn_like_training_and_shares_no_text(tmp_path, slots, catalog):
    from tools.dev_set import main as dev_set

    first = tmp_path / "first.jsonl"
    assert dev_set(["--seed", "777", "--n", "60", "--out", str(first)]) == 0
    rows = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    excluded = tmp_path / "train.jsonl"
    excluded.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[:20]), encoding="utf-8")
    second = tmp_path / "second.jsonl"
    assert dev_set(["--seed", "777", "--n", "60", "--exclude", str(excluded), "--out", str(second)]) == 0
    again = [json.loads(line) for line in second.read_text(encoding="utf-8").splitlines()]
    assert len(again) == 60 and not {r["text"] for r in rows[:20]} & {r["text"] for r in again}
    cfg = DataConfig.load()
    split = split_slots(slots, catalog, cfg.languages, cfg.heldout_share, cfg.seed)
    for row in again:  # the training slots only: the held-out ones belong to the eval set
        assert row["style"] not in split.heldout["frame"] and row["expression"] not in split.heldout["expression"]
        assert row["product_form"] not in split.heldout["synonym"] and row["unseen"] == []
    with pytest.raises(SystemExit):
        dev_set(["--seed", str(cfg.eval_seed), "--out", str(tmp_path / "x.jsonl")])


def test_dev_set_of_plurals_with_no_number(tmp_path):
    """--plural-share S --style plural: the rows a plural recipe adds, which the eval set never draws; a
    Croatian subject, written in the singular, is no plural row (5 of this seed's first 300 would be)."""
    from tools.dev_set import main as dev_set

    out = tmp_path / "plural.jsonl"
    assert dev_set(["--seed", "779", "--n", "300", "--plural-share", "1", "--style", "plural", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 300 and all(r["quantity_style"] == "plural" and r["quantity"] == 1 for r in rows)
    for bad in (["--plural-share", "2"], ["--style", "plurals"]):
        with pytest.raises(SystemExit):
            dev_set(["--seed", "779", *bad, "--out", str(tmp_path / "x.jsonl")])
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("change", [{"backend": "metaprompt"}, {"source": "my_requests.jsonl"}])
def test_dev_set_refuses_params_it_would_ignore(tmp_path, monkeypatch, capsys, change):
    """It draws from the offline slots; with another backend or a source file it would silently describe
    data that training does not use."""
    import dataclasses

    import tools.dev_set

    cfg = dataclasses.replace(DataConfig.load(), **change)
    monkeypatch.setattr(tools.dev_set.DataConfig, "load", classmethod(lambda cls, *a, **k: cfg))
    out = tmp_path / "dev.jsonl"
    with pytest.raises(SystemExit):
        tools.dev_set.main(["--seed", "777", "--n", "5", "--out", str(out)])
    assert "data.backend must be offline and data.source empty" in capsys.readouterr().err and not out.exists()


def test_dev_set_of_unseen_slots_and_training_rows_without_them(tmp_path, slots, catalog, capsys):
    """--unseen-share: a second held-out slice that neither the training file nor the eval set's slice
    touches, and a dev set built from it the way the eval set is built from its own."""
    from tools.dev_set import main as dev_set

    train_out, out = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    args = ["--seed", "778", "--n", "120", "--unseen-share", "0.2", "--train-out", str(train_out), "--out", str(out)]
    assert dev_set(args) == 0
    cfg = DataConfig.load()
    eval_slice = split_slots(slots, catalog, cfg.languages, cfg.heldout_share, cfg.seed)
    dev_slice = split_slots(slots, catalog, cfg.languages, 0.2, 778, among=eval_slice, purpose="dev")
    fields = {"frame": "style", "expression": "expression", "synonym": "product_form"}
    for slot in fields:
        assert dev_slice.heldout[slot] and not dev_slice.heldout[slot] & eval_slice.heldout[slot]
    train = [json.loads(line) for line in train_out.read_text(encoding="utf-8").splitlines()]
    dev = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(train) == cfg.n_examples and len(dev) == 120
    for row in train:  # neither slice reaches training
        for slot, name in fields.items():
            assert row[name] not in eval_slice.heldout[slot] | dev_slice.heldout[slot]
    for row in dev:  # only its own slice's frames; never a slot of the eval set's slice
        assert row["style"] in dev_slice.heldout["frame"]
        assert all(row[name] not in eval_slice.heldout[slot] for slot, name in fields.items())
    for slot in ("expression", "synonym"):  # rows with a verb or synonym training lacks say so
        marked = [r for r in dev if slot in r["unseen"]]
        assert marked and all(r[fields[slot]] in dev_slice.heldout[slot] for r in marked)
    assert not {r["text"].casefold() for r in train} & {r["text"].casefold() for r in dev}
    with pytest.raises(SystemExit):  # a set of unseen slots means nothing against the usual training data
        dev_set(["--seed", "778", "--unseen-share", "0.2", "--out", str(tmp_path / "x.jsonl")])
    assert "--train-out" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    "expression, message",
    [
        ("treba mi", "expected exactly one of {item} or {item_nom}"),
        ("daj {item} i {item_nom}", "expected exactly one"),
        ("dodaj {item} | dodati {item_nom}", "must use the same item slot"),
    ],
)
def test_a_bad_expression_names_its_place_in_the_slot_file(tmp_path, expression, message):
    raw = yaml.safe_load(SLOTS_FILE.read_text(encoding="utf-8"))
    raw["hr"]["expressions"]["add"]["statement"][3] = expression
    path = tmp_path / "slots.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(
        GenerationError, match=rf"slots.yaml: hr.expressions.add.statement\[3\]: .*{re.escape(message)}"
    ):
        load_slots(path)
