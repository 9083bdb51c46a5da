import pytest

from ecommerce_slm.scoring import accuracy_summary, parse_answer, score_one

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
