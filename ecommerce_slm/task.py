"""The task, defined once: the answer schema, the prompt around a request, and what a valid row is.

Every stage imports these; nothing else may spell out the prompt or the answer format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ecommerce_slm.cli import ProjectError

ACTIONS = ("add", "remove")
# How an answer is decoded: freely, or constrained to answer_schema() (every eval measures each)
DECODING_MODES = ("free", "json_schema")
ANSWER_FIELDS = ("action", "product", "quantity")
# A cap keeps schema-constrained decoding from emitting digits forever (a grammar cannot stop an endless integer).
MAX_QUANTITY = 9999
# A cart request is a sentence; a longer "request" is a pasted file, and would allocate gigabytes in a model.
MAX_TEXT_CHARS = 2000
# How Intent.to_json separates fields and values (json.dumps' separators); constrained decoding holds
# answers to the same form, so a free answer and a grammar's agree to the byte.
ANSWER_SEPARATORS = (", ", ": ")

# What a fine-tuned model is asked. Three words on purpose: the model learns the task from its training
# answers, not from instructions, while every training step pays for every prompt token (the instruction
# below took 20 of an example's 73 tokens: 27% of the step). An empty system turn and compact JSON (10 fewer
# tokens, 290 steps in the minutes of 250) scored no higher on validation: docs/measurements.md.
SYSTEM_PROMPT = "Cart request to JSON."
# What a model never trained on the task is told, before its worked examples (the base and API baselines).
INSTRUCTIONS = "Convert the shopper's cart request to JSON with action (add or remove), product and quantity."


def answer_schema(products: list[str] | None = None) -> dict[str, Any]:
    """JSON schema of the answer; with `products`, the product is constrained to the catalog."""
    product: dict[str, Any] = {"type": "string"}
    if products:
        product = {"type": "string", "enum": sorted(products)}
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": list(ACTIONS)},
            "product": product,
            "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
        },
        "required": list(ANSWER_FIELDS),
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Intent:
    action: str
    product: str
    quantity: int

    def to_json(self) -> str:
        """The exact completion the model is trained to produce (key order fixed)."""
        return json.dumps(
            {"action": self.action, "product": self.product, "quantity": self.quantity},
            ensure_ascii=False,
            separators=ANSWER_SEPARATORS,
        )


def is_schema_answer(raw: str, schema: dict[str, Any]) -> bool:
    """raw is one complete answer exactly as Intent.to_json writes it, every field within answer_schema().

    Both constrained decoders (xgrammar's grammar for transformers, llama.cpp's JSON-schema grammar for
    GGUF) accept this form with nothing before or after it; a stricter test than theirs is safe, since
    it only ever sends more rows to be decoded under the grammar.
    """
    try:
        value = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(value, dict) or list(value) != list(ANSWER_FIELDS):
        return False
    fields = schema["properties"]
    action, product, quantity = (value[f] for f in ANSWER_FIELDS)
    return (
        action in fields["action"]["enum"]
        and isinstance(product, str)
        and product in fields["product"].get("enum", [product])
        and type(quantity) is int
        and fields["quantity"]["minimum"] <= quantity <= fields["quantity"]["maximum"]
        and Intent(action, product, quantity).to_json() == raw
    )


def prompt_messages(text: str) -> list[dict[str, str]]:
    """Chat messages that ask for the intent of one shopper request."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": text},
    ]


def completion_messages(intent: Intent) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": intent.to_json()}]


def few_shot_messages(text: str, examples: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The prompt with worked examples first, for models never trained on the task (the paper's base baselines)."""
    shots = []
    for row in examples:
        shots += [{"role": "user", "content": row["text"]}] + completion_messages(intent_of(row))
    return [{"role": "system", "content": INSTRUCTIONS}, *shots, {"role": "user", "content": text}]


class InvalidRow(ProjectError, ValueError):
    """A data row that breaks the row contract; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def validate_row(row: Any, products: set[str] | None, languages: list[str] | None = None) -> dict[str, Any]:
    """Check one data row and return it normalised (quantity as int, text stripped).

    Required: text (non-empty, at most MAX_TEXT_CHARS), action (one of ACTIONS), product (a catalog name;
    any non-empty name when products is None), quantity (an integer in 1..MAX_QUANTITY; digit strings are
    accepted because CSV has no types). Optional: language (one of `languages` when given). Other keys
    are kept as metadata.
    """
    if not isinstance(row, dict):
        raise InvalidRow(
            "row", f"expected an object with fields text, action, product, quantity, got {type(row).__name__}"
        )
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRow("text", f"expected non-empty text, got {text!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRow("text", f"expected a request of at most {MAX_TEXT_CHARS} characters, got {len(text)}")
    action = row.get("action")
    if action not in ACTIONS:
        raise InvalidRow("action", f"expected one of {list(ACTIONS)}, got {action!r}")
    product = row.get("product")
    if products is None:
        if not isinstance(product, str) or not product.strip():
            raise InvalidRow("product", f"expected a non-empty product name, got {product!r}")
    elif product not in products:
        hint = next((p for p in products if isinstance(product, str) and p.lower() == product.strip().lower()), None)
        suffix = f" (did you mean {hint!r}?)" if hint else ""
        raise InvalidRow("product", f"expected a product name from the catalog, got {product!r}{suffix}")
    quantity = _positive_int(row.get("quantity"))
    language = row.get("language")
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise InvalidRow("language", f"expected a language code such as 'en', got {language!r}")
    if language is not None and languages is not None and language not in languages:
        raise InvalidRow("language", f"expected one of data.languages {languages}, got {language!r}")
    return {**row, "text": text.strip(), "action": action, "product": product, "quantity": quantity}


def _positive_int(value: Any) -> int:
    # ASCII digits only: "³".isdigit() is true and int("³") fails
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUANTITY:
        raise InvalidRow("quantity", f"expected an integer in 1..{MAX_QUANTITY}, got {value!r}")
    return value


def intent_of(row: dict[str, Any]) -> Intent:
    return Intent(row["action"], row["product"], int(row["quantity"]))
