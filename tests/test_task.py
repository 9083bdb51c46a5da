import json

import pytest

from ecommerce_slm.task import (
    ANSWER_FIELDS,
    Intent,
    InvalidRow,
    answer_schema,
    is_schema_answer,
    prompt_messages,
    validate_row,
)

PRODUCTS = {"Lip Balm", "Shampoo"}


def test_answer_is_the_papers_json():
    assert Intent("remove", "Lip Balm", 12).to_json() == '{"action": "remove", "product": "Lip Balm", "quantity": 12}'


def test_answer_schema_lists_fields_and_optional_enum():
    schema = answer_schema(["Shampoo", "Lip Balm"])
    assert schema["required"] == list(ANSWER_FIELDS)
    assert schema["properties"]["product"]["enum"] == ["Lip Balm", "Shampoo"]
    assert "enum" not in answer_schema()["properties"]["product"]


def test_prompt_has_system_and_user_turns():
    messages = prompt_messages("add 2 shampoos")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "add 2 shampoos"


def test_valid_row_is_normalised():
    row = validate_row(
        {"text": " add 2 ", "action": "add", "product": "Shampoo", "quantity": "2", "extra": 1}, PRODUCTS
    )
    assert row["quantity"] == 2 and row["text"] == "add 2" and row["extra"] == 1


@pytest.mark.parametrize(
    "row, field",
    [
        ({"text": "", "action": "add", "product": "Shampoo", "quantity": 1}, "text"),
        ({"action": "add", "product": "Shampoo", "quantity": 1}, "text"),
        ({"text": "x", "action": "buy", "product": "Shampoo", "quantity": 1}, "action"),
        ({"text": "x", "action": "add", "product": "Soap", "quantity": 1}, "product"),
        ({"text": "x", "action": "add", "product": "Shampoo", "quantity": 0}, "quantity"),
        ({"text": "x", "action": "add", "product": "Shampoo", "quantity": 2.5}, "quantity"),
        ({"text": "x", "action": "add", "product": "Shampoo", "quantity": True}, "quantity"),
        ({"text": "x", "action": "add", "product": "Shampoo", "quantity": "two"}, "quantity"),
        ({"text": "x", "action": "add", "product": "Shampoo", "quantity": 1, "language": ""}, "language"),
        (["not", "an", "object"], "row"),
    ],
)
def test_each_bad_field_is_named(row, field):
    with pytest.raises(InvalidRow) as err:
        validate_row(row, PRODUCTS)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: expected")


def test_wrong_case_product_gets_a_hint():
    with pytest.raises(InvalidRow, match="did you mean 'Lip Balm'"):
        validate_row({"text": "x", "action": "add", "product": "lip balm", "quantity": 1}, PRODUCTS)


def test_answer_round_trips_through_json():
    assert json.loads(Intent("add", "Shampoo", 3).to_json()) == {"action": "add", "product": "Shampoo", "quantity": 3}


def test_untrained_models_get_the_instructions_and_tuned_ones_the_short_prompt():
    from ecommerce_slm.task import INSTRUCTIONS, SYSTEM_PROMPT, few_shot_messages

    example = {"text": "add 2 shampoos", "action": "add", "product": "Shampoo", "quantity": 2}
    messages = few_shot_messages("remove the socks", [example])
    assert messages[0] == {"role": "system", "content": INSTRUCTIONS}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "remove the socks"
    assert prompt_messages("x")[0]["content"] == SYSTEM_PROMPT and len(SYSTEM_PROMPT) < len(INSTRUCTIONS) / 3


SCHEMA = answer_schema(sorted(PRODUCTS))


def test_a_schema_answer_is_the_trained_form_within_the_schema():
    assert is_schema_answer('{"action": "remove", "product": "Lip Balm", "quantity": 12}', SCHEMA)
    assert is_schema_answer('{"action": "add", "product": "Any Thing", "quantity": 9999}', answer_schema())


@pytest.mark.parametrize(
    "raw",
    [
        '{"action": "remove", "product": "Lip Balm", "quantity": 12} ',  # the grammar may add a space here
        '{"action": "remove", "product": "Lip Balm", "quantity": 12}\n',
        '{"action":"remove","product":"Lip Balm","quantity":12}',  # another spacing
        '{"product": "Lip Balm", "action": "remove", "quantity": 12}',  # another key order
        '{"action": "remove", "product": "Lip Balms", "quantity": 12}',  # not in the catalog
        '{"action": "delete", "product": "Lip Balm", "quantity": 12}',
        '{"action": "remove", "product": "Lip Balm", "quantity": 0}',
        '{"action": "remove", "product": "Lip Balm", "quantity": 10000}',
        '{"action": "remove", "product": "Lip Balm", "quantity": "12"}',
        '{"action": "remove", "product": "Lip Balm", "quantity": 12.0}',
        '{"action": "remove", "product": "Lip Balm", "quantity": true}',
        '{"action": "remove", "product": "Lip Balm", "quantity": 12, "note": ""}',
        '```json\n{"action": "remove", "product": "Lip Balm", "quantity": 12}\n```',
        '["remove", "Lip Balm", 12]',
        "",
    ],
)
def test_anything_else_is_not_a_schema_answer(raw):
    assert not is_schema_answer(raw, SCHEMA)


def test_both_grammars_accept_every_schema_answer(real_tokenizer):
    """is_schema_answer must be at least as strict as the grammars the engines decode under, or the eval
    would keep a free answer that constrained decoding changes. Every catalog product, both actions and
    the quantities at the schema's edges, followed by the end-of-sequence token, through xgrammar's grammar
    (transformers) and llama.cpp's GBNF (GGUF engines; compiled by xgrammar, whose EBNF reads GBNF)."""
    import xgrammar as xgr

    from ecommerce_slm.engines import answer_grammar, gguf_grammar
    from ecommerce_slm.evaluation import catalog_products
    from ecommerce_slm.paths import DEFAULT_CATALOG

    products = catalog_products(DEFAULT_CATALOG)
    schema = answer_schema(products)
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(real_tokenizer))
    grammars = {
        "xgrammar": answer_grammar(compiler, schema),  # the transformers engine's own
        "gguf": compiler.compile_grammar(gguf_grammar(schema)),
    }

    def accepts(grammar, raw: str) -> bool:
        matcher = xgr.GrammarMatcher(grammar, override_stop_tokens=[real_tokenizer.eos_token_id])
        return matcher.accept_string(raw) and matcher.accept_token(real_tokenizer.eos_token_id)

    answers = [Intent(a, p, q).to_json() for a in ("add", "remove") for p in products for q in (1, 12, 9999)]
    assert all(is_schema_answer(raw, schema) for raw in answers)
    for name, grammar in grammars.items():
        rejected = [raw for raw in answers if not accepts(grammar, raw)]
        assert not rejected, (name, rejected[:3])
        assert not accepts(grammar, answers[0].replace('"add"', '"put"')), name  # and it is a grammar
        assert not accepts(grammar, answers[0][:-1]), name  # and it wants the whole answer before the end
    # xgrammar's holds answers to the trained form, spacing included
    assert not accepts(grammars["xgrammar"], json.dumps(json.loads(answers[0]), separators=(",", ":")))
