import pytest

from ecommerce_slm.scoring import (
    NO_ANSWER,
    WRONG_TYPE,
    accuracy_summary,
    diagnostics,
    parse_answer,
    predicted_label,
    score_one,
)

TRUTH = {"action": "remove", "product": "Lip Balm", "quantity": 12}
EXACT = '{"action": "remove", "product": "Lip Balm", "quantity": 12}'


@pytest.mark.parametrize(
    "raw, json_valid, exact",
    [
        (EXACT, True, True),
        (f"```json\n{EXACT}\n```", True, True),
        (f"Sure! Here it is: {EXACT} Hope that helps.", True, True),
        ('{"action": "remove", "product": "Lip Balm", "quantity": 12,}', True, True),  # trailing comma
        ('{"action": "remove", "product": "Lip Balm", "quantity": "12"}', True, False),  # wrong type
        ('{"action": "remove", "product": "Lip Balm", "quantity": 12.0}', True, False),
        ('{"action": "remove", "product": "Lip Balm", "quantity": 12, "note": "x"}', True, True),  # extra key
        (f"{EXACT} {EXACT}", False, False),  # two objects: ambiguous
        ('{"action": "remove", "product": "Lip Balm"', False, False),  # cut off
        ("I cannot help with that.", False, False),
        ("", False, False),
        ("[1, 2]", False, False),
    ],
)
def test_messy_outputs(raw, json_valid, exact):
    score = score_one(raw, TRUTH)
    assert score["json_valid"] is json_valid
    assert score["exact"] is exact


def test_failed_fields_and_lenient_product():
    score = score_one('{"action": "remove", "product": "lip balm", "quantity": 12}', TRUTH)
    assert not score["exact"] and score["lenient"] and score["failed_fields"] == ["product"]


def test_parse_errors_are_named():
    assert parse_answer("nothing").error == "none_found"
    assert parse_answer('{"a": 1} {"b": 2}').error == "several_objects"


def test_summary_by_language_and_action():
    rows = [{**TRUTH, "language": "en"}, {**TRUTH, "language": "hr"}, {**TRUTH, "action": "add", "language": "hr"}]
    scores = [score_one(EXACT, TRUTH), score_one("oops", TRUTH), score_one(EXACT.replace("remove", "add"), rows[2])]
    summary = accuracy_summary(rows, scores)
    assert summary["exact_match"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["by_language"] == {"en": 1.0, "hr": 0.5}
    assert summary["by_action"] == {"add": 1.0, "remove": 0.5}
    assert summary["json_valid"] == pytest.approx(2 / 3, abs=1e-4)


def test_diagnostics_confusions_count_every_miss_by_its_predicted_label():
    rows = [
        {"action": "add", "product": "Running Shoes", "quantity": 5},
        {"action": "remove", "product": "Running Shoes", "quantity": 1},
        {"action": "remove", "product": "Bread", "quantity": 2},
        {"action": "add", "product": "Bread", "quantity": 12},
    ]
    outputs = [
        '{"action": "add", "product": "Toothbrush", "quantity": 5}',
        '{"action": "add", "product": "Toothbrush", "quantity": 1}',
        '{"action": "remove", "product": "Barrera", "quantity": 2}',  # a product no catalog has
        "I cannot help with that",
    ]
    scores = [score_one(out, row) for out, row in zip(outputs, rows, strict=True)]
    found = diagnostics(rows, scores)
    product = found["confusion"]["product"]
    assert product["labels"] == ["Bread", "Running Shoes", NO_ANSWER, "Barrera", "Toothbrush"]
    assert product["top"][0] == {"expected": "Running Shoes", "predicted": "Toothbrush", "count": 2}
    assert sum(map(sum, product["matrix"])) == len(rows)
    action = found["confusion"]["action"]
    assert action["labels"] == ["add", "remove", NO_ANSWER]
    assert action["matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    report = found["classification_report"]
    assert report["action"]["remove"]["recall"] == 0.5 and report["action"]["remove"]["support"] == 2
    assert report["product"]["Running Shoes"]["recall"] == 0.0
    assert report["quantity"]["micro avg"]["recall"] == 0.75  # over the true classes: the field accuracy


def test_diagnostics_keep_a_right_value_of_the_wrong_type_apart():
    row = {"action": "add", "product": "Milk", "quantity": 3}
    score = score_one('{"action": "add", "product": "Milk", "quantity": "3"}', row)
    assert predicted_label(score, "quantity", 3) == WRONG_TYPE
    assert predicted_label(score, "product", "Milk") == "Milk"


def test_rows_with_slots_training_never_saw_are_scored_apart():
    rows = [
        {"action": "add", "product": "Milk", "quantity": 1, "unseen": ["expression"]},
        {"action": "add", "product": "Milk", "quantity": 1, "unseen": ["expression", "synonym"]},
        {"action": "add", "product": "Milk", "quantity": 1, "unseen": []},
    ]
    right = '{"action": "add", "product": "Milk", "quantity": 1}'
    scores = [score_one(out, r) for out, r in zip([right, "no", right], rows, strict=True)]
    summary = accuracy_summary(rows, scores)
    assert summary["by_unseen_slot"] == {
        "expression": {"n": 2, "exact_match": 0.5},
        "none": {"n": 1, "exact_match": 1.0},
        "synonym": {"n": 1, "exact_match": 0.0},
    }
    assert "by_unseen_slot" not in accuracy_summary([{k: v for k, v in rows[2].items() if k != "unseen"}], scores[2:])
