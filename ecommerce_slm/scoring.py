"""Scoring rules, defined once: how raw model output is parsed, and what counts as correct.

The paper's rule (exact match): the output parses to one JSON object and action, product and quantity
all equal the truth. Around it: a tolerant parser (text around the object, code fences, trailing
commas) and a lenient score that compares products case-insensitively. `diagnostics` says where the
misses go (scikit-learn's per-field classification report and the action and product confusion matrices).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import classification_report, confusion_matrix

from ecommerce_slm.task import ANSWER_FIELDS

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


@dataclass(frozen=True)
class Parsed:
    answer: dict[str, Any] | None
    error: str | None  # none_found | several_objects | not_an_object | None


def _objects(text: str) -> list[Any]:
    """Every top-level JSON value that starts with '{' in text, tolerating trailing commas."""
    decoder, found, i = json.JSONDecoder(), [], 0
    text = _TRAILING_COMMA.sub(r"\1", text)
    while (start := text.find("{", i)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        found.append(value)
        i = end
    return found


def parse_answer(raw: str) -> Parsed:
    """Find the one JSON object in a model's raw output."""
    fenced = _FENCE.findall(raw or "")
    objects = [o for block in fenced for o in _objects(block)] if fenced else _objects(raw or "")
    if not objects:
        return Parsed(None, "none_found")
    if len(objects) > 1:
        return Parsed(None, "several_objects")
    if not isinstance(objects[0], dict):
        return Parsed(None, "not_an_object")
    return Parsed(objects[0], None)


def field_matches(answer: dict[str, Any], truth: dict[str, Any], lenient: bool = False) -> dict[str, bool]:
    """Per field: equal to the truth. Quantity must be an integer (not "12", not 12.0, not true)."""
    out = {}
    for field in ANSWER_FIELDS:
        got, want = answer.get(field), truth[field]
        if field == "quantity":
            out[field] = isinstance(got, int) and not isinstance(got, bool) and got == want
        elif lenient and isinstance(got, str):
            out[field] = got.strip().casefold() == str(want).casefold()
        else:
            out[field] = got == want
    return out


def score_one(raw: str, truth: dict[str, Any]) -> dict[str, Any]:
    parsed = parse_answer(raw)
    fields = field_matches(parsed.answer, truth) if parsed.answer is not None else dict.fromkeys(ANSWER_FIELDS, False)
    lenient = field_matches(parsed.answer, truth, lenient=True) if parsed.answer is not None else fields
    return {
        "json_valid": parsed.answer is not None,
        "parse_error": parsed.error,
        "parsed": parsed.answer,
        "fields": fields,
        "exact": all(fields.values()),
        "lenient": all(lenient.values()),
        "failed_fields": [f for f, ok in fields.items() if not ok],
    }


def accuracy_summary(rows: list[dict[str, Any]], scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per field, per language, per action and per unseen slot; JSON validity."""
    n = len(scores)

    def rate(values) -> float:
        values = list(values)
        return round(sum(values) / len(values), 4) if values else 0.0

    groups: dict[str, dict[str, list[bool]]] = {
        "language": defaultdict(list),
        "action": defaultdict(list),
        "unseen": defaultdict(list),
    }
    for row, score in zip(rows, scores, strict=True):
        groups["language"][row.get("language", "unknown")].append(score["exact"])
        groups["action"][row["action"]].append(score["exact"])
        if "unseen" in row:  # generated eval rows name the slots training never saw
            for slot in row["unseen"] or ["none"]:
                groups["unseen"][slot].append(score["exact"])
    unseen = {k: {"n": len(v), "exact_match": rate(v)} for k, v in sorted(groups["unseen"].items())}
    return {
        "n": n,
        "exact_match": rate(s["exact"] for s in scores),
        "lenient_match": rate(s["lenient"] for s in scores),
        "json_valid": rate(s["json_valid"] for s in scores),
        "field_accuracy": {f: rate(s["fields"][f] for s in scores) for f in ANSWER_FIELDS},
        "by_language": {k: rate(v) for k, v in sorted(groups["language"].items())},
        "by_action": {k: rate(v) for k, v in sorted(groups["action"].items())},
        # exact match on rows with an action expression / a product synonym that no training row uses
        **({"by_unseen_slot": unseen} if unseen else {}),
    }


NO_ANSWER = "<no answer>"  # the output held no JSON object, or the object lacked the field
WRONG_TYPE = "<wrong type>"  # e.g. quantity "12" (a string) for 12: the right value, not a valid answer
CONFUSION_FIELDS = ("action", "product")


def predicted_label(score: dict[str, Any], field: str, truth: Any) -> str:
    """A prediction as a class label; a right value of the wrong type is its own class."""
    if score["fields"][field]:
        return str(truth)
    got = (score["parsed"] or {}).get(field)
    if got is None:
        return NO_ANSWER
    return WRONG_TYPE if str(got) == str(truth) else str(got)


def diagnostics(rows: list[dict[str, Any]], scores: list[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """Per field: scikit-learn's classification report over the true classes; for action and product the
    confusion matrix (true rows, predicted columns, every label either side) and the `top` most frequent
    confusions."""
    out: dict[str, Any] = {"classification_report": {}, "confusion": {}}
    for field in ANSWER_FIELDS:
        truth = [str(r[field]) for r in rows]
        predicted = [predicted_label(s, field, r[field]) for r, s in zip(rows, scores, strict=True)]
        classes = sorted(set(truth))
        report = classification_report(truth, predicted, labels=classes, output_dict=True, zero_division=0)
        out["classification_report"][field] = {
            label: {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
            if isinstance(values, dict)
            else round(values, 4)
            for label, values in report.items()
        }
        if field in CONFUSION_FIELDS:
            labels = classes + sorted(set(predicted) - set(classes))
            matrix = confusion_matrix(truth, predicted, labels=labels)
            pairs = [
                {"expected": labels[i], "predicted": labels[j], "count": int(matrix[i, j])}
                for i in range(len(labels))
                for j in range(len(labels))
                if i != j and matrix[i, j]
            ]
            pairs.sort(key=lambda p: (-p["count"], p["expected"], p["predicted"]))
            out["confusion"][field] = {"labels": labels, "matrix": matrix.tolist(), "top": pairs[:top]}
    return out
