"""The evaluate CLI and stage on tiny models, few-shot prompts, KL, and the API baseline paths."""

import json
import shutil

import pytest
import torch

from ecommerce_slm.divergence import KlError, SavedReference, build_reference, kl_sequences, mean_kl
from ecommerce_slm.engines import TransformersEngine, pad_after_prefix, shared_prefix_length
from ecommerce_slm.evaluation import (
    EvalConfig,
    EvalError,
    evaluate,
    load_rows,
    pick_few_shot,
    score_rows,
)
from ecommerce_slm.task import Intent, answer_schema
from ecommerce_slm.variants import Variant, resolve
from stages.eval import main
from stages.eval_api import EvalApiConfig
from stages.eval_api import main as eval_api_main

ROWS = [
    {"text": "add 2 shampoos", "action": "add", "product": "Shampoo", "quantity": 2, "language": "en"},
    {"text": "makni ruksak", "action": "remove", "product": "Backpack", "quantity": 1},
]


def write_rows(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_writes_metrics_details_and_errors(tiny_model_dir, tmp_path):
    out = tmp_path / "metrics" / "mine.json"
    assert (
        main(["--model", str(tiny_model_dir), "--data", str(write_rows(tmp_path / "mine.jsonl")), "--out", str(out)])
        == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and metrics["free"]["exact_match"] == 0.0  # a random model gets nothing right
    # constrained decoding makes even a random model's output valid JSON of the answer schema
    assert metrics["json_schema"]["json_valid"] == 1.0
    details = json.loads((tmp_path / "metrics" / "mine.details.json").read_text())
    assert set(details["free"]["by_language"]) == {"en", "unknown"}
    errors = [json.loads(line) for line in (tmp_path / "metrics" / "mine.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 4 and {e["mode"] for e in errors} == {"free", "json_schema"}
    assert errors[0]["expected"] == {"action": "add", "product": "Shampoo", "quantity": 2}
    schema_answers = [e["parsed"] for e in errors if e["mode"] == "json_schema"]
    assert all(set(a) == {"action", "product", "quantity"} for a in schema_answers)


def test_cli_rejects_a_non_model_folder(tmp_path, capsys):
    assert (
        main(
            [
                "--model",
                str(tmp_path),
                "--data",
                str(write_rows(tmp_path / "r.jsonl")),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 1
    )
    assert "not a model folder" in capsys.readouterr().err


def test_bad_row_names_file_line_and_field(tmp_path):
    bad = write_rows(
        tmp_path / "bad.jsonl", ROWS + [{"text": "add soap", "action": "buy", "product": "Soap", "quantity": 1}]
    )
    with pytest.raises(EvalError, match=r"bad.jsonl:3: action: expected one of"):
        load_rows(bad, None)


def test_variant_names():
    assert resolve("q4_k_m") == Variant("Q4_K_M", "llama_cpp", "models/gguf/Q4_K_M.gguf")
    assert resolve("base").few_shot and not resolve("merged").few_shot
    assert resolve("api:gpt-4.1").file_stem == "api-gpt-4.1"
    with pytest.raises(ValueError, match="unknown variant 'q9'"):
        resolve("q9")


def test_few_shot_covers_languages_and_actions():
    rows = [
        {"text": f"{lang} {action} {i}", "language": lang, "action": action, "product": "Soap", "quantity": 1}
        for lang in ("en", "hr", "es")
        for action in ("add", "remove")
        for i in range(5)
    ]
    picked = pick_few_shot(rows, 6, seed=1)
    assert {(r["language"], r["action"]) for r in picked} == {
        (lang, a) for lang in ("en", "hr", "es") for a in ("add", "remove")
    }
    assert picked == pick_few_shot(rows, 6, seed=1)


def test_kl_is_zero_against_itself_and_positive_against_another_model(tiny_model_dir, tiny_wide_model_dir):
    first = TransformersEngine(tiny_model_dir)
    sequences = kl_sequences(ROWS, first.tokenizer, 2)
    assert all(0 < start < len(ids) for ids, start in sequences)
    assert mean_kl(first, first, sequences) == pytest.approx(0.0, abs=1e-6)
    assert mean_kl(first, TransformersEngine(tiny_wide_model_dir), sequences) > 0.01


def test_the_untuned_base_is_never_compared_with_merged(tiny_model_dir, tiny_wide_model_dir, monkeypatch):
    """eval@base does not list models/merged (so a training run never reruns it): it must not read it."""
    import ecommerce_slm.divergence as divergence

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference model was opened")

    monkeypatch.setattr(divergence, "TransformersEngine", no_reference)
    metrics = {}
    base = Variant("base", "transformers", str(tiny_wide_model_dir), few_shot=True)
    divergence.add_kl(metrics, object(), base, ROWS, EvalConfig(), tiny_model_dir)
    assert metrics["kl_from_merged"] is None and "untuned base" in metrics["kl_note"]
    merged = Variant("merged", "transformers", str(tiny_model_dir))  # the reference itself: 0, nothing opened
    divergence.add_kl(metrics, object(), merged, ROWS, EvalConfig(), tiny_model_dir)
    assert metrics["kl_from_merged"] == 0.0
    tuned = Variant("tuned", "transformers", str(tiny_wide_model_dir))
    with pytest.raises(AssertionError, match="reference model was opened"):  # any other variant is compared
        divergence.add_kl({}, object(), tuned, ROWS, EvalConfig(), tiny_model_dir)


def test_a_saved_reference_gives_the_kl_of_the_live_one_without_opening_the_merged_model(
    tiny_model_dir, tiny_wide_model_dir, tmp_path, monkeypatch
):
    import ecommerce_slm.divergence as divergence

    cfg = EvalConfig(kl_examples=2, perplexity_rows=0)
    info = build_reference(ROWS, cfg, tiny_model_dir, tmp_path / "no.gguf", tmp_path / "reference")
    assert info["kl"]["rows"] == 2 and info["perplexity"] is None
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == ["logprobs.safetensors", "reference.json"]
    variant = Variant("other", "transformers", str(tiny_wide_model_dir))
    engine = TransformersEngine(tiny_wide_model_dir)
    live = {}
    divergence.add_kl(live, engine, variant, ROWS, cfg, tiny_model_dir)

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference model was opened")

    monkeypatch.setattr(divergence, "TransformersEngine", no_reference)
    saved, from_saved = SavedReference(tmp_path / "reference"), {}
    divergence.add_kl(from_saved, engine, variant, ROWS, cfg, tiny_model_dir, saved)
    assert from_saved["kl_from_merged"] == live["kl_from_merged"] > 0.01
    # other rows (or another kl_examples) than the saved reference was made from: an error naming the stage
    other_rows = [dict(ROWS[0], text="add 3 shampoos"), ROWS[1]]
    with pytest.raises(KlError, match=r"reference: holds no reference .* run `dvc repro kl_reference`"):
        divergence.add_kl({}, engine, variant, other_rows, cfg, tiny_model_dir, saved)
    with pytest.raises(KlError, match="holds no reference"):
        divergence.add_kl({}, engine, variant, ROWS, EvalConfig(kl_examples=1, perplexity_rows=0), None, saved)
    with pytest.raises(KlError, match="holds no reference"):  # a folder the stage never finished
        divergence.add_kl({}, engine, variant, ROWS, cfg, None, SavedReference(tmp_path / "missing"))


def test_shared_prefix_leaves_each_sequence_a_token_and_pads_after_it(real_tokenizer):
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1 and shared_prefix_length([[7, 8]]) == 1
    ids, mask = pad_after_prefix([[1, 2, 3], [1, 2, 4, 5, 6]], 2, 0)
    assert ids.tolist() == [[1, 2, 0, 0, 3], [1, 2, 4, 5, 6]] and mask.tolist() == [[1, 1, 0, 0, 1], [1] * 5]
    # with nothing shared it is the tokenizer's own left padding
    prompts = ["add 2 shampoos", "makni ruksak iz košarice molim te"]
    left = real_tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    ids, mask = pad_after_prefix(
        [real_tokenizer(p, add_special_tokens=False).input_ids for p in prompts], 0, real_tokenizer.pad_token_id
    )
    assert torch.equal(ids, left["input_ids"]) and torch.equal(mask, left["attention_mask"])


def test_generate_sends_its_inputs_to_the_models_device(tiny_model_dir):
    """The train stage scores its own result where it trained (a GPU): the prompts must follow the model.

    Here "meta" stands in for a GPU: a device other than the CPU the prompts are tokenized on.
    """
    engine = TransformersEngine(tiny_model_dir, max_new_tokens=2)
    engine.model.to("meta")
    seen = []

    def recording(input_ids, attention_mask, **kwargs):
        seen.append((input_ids.device.type, attention_mask.device.type))
        return torch.zeros((input_ids.shape[0], input_ids.shape[1] + 2), dtype=torch.long)

    engine.model.generate = recording
    assert len(engine.generate([[{"role": "user", "content": "add 2 shampoos"}]])) == 1
    assert seen == [("meta", "meta")]


def test_few_shot_prefix_computed_once_decodes_as_without_it(tiny_model_dir):
    """The untuned base's worked examples are computed once per call; every step's logits stay the same."""
    from ecommerce_slm.task import few_shot_messages

    examples = [{"text": f"add {n} soaps", "action": "add", "product": "Soap", "quantity": n} for n in range(2, 8)]
    texts = ["add 2 shampoos", "makni ruksak", "quita tres cepillos de dientes del carrito, por favor"]
    conversations = [few_shot_messages(t, examples) for t in texts]

    def decode(min_shared_prefix):
        engine = TransformersEngine(tiny_model_dir, max_new_tokens=6, batch_size=2)  # a full and a partial batch
        engine.min_shared_prefix = min_shared_prefix
        original, calls = engine.model.generate, []

        def recording(**kwargs):
            out = original(**kwargs, output_scores=True, return_dict_in_generate=True)
            calls.append(
                (kwargs["past_key_values"] is not None, kwargs["input_ids"].shape[0], torch.stack(out.scores, 1))
            )
            return out.sequences

        engine.model.generate = recording
        answers = engine.generate(conversations)
        return answers, calls

    cached, cached_calls = decode(32)
    plain, plain_calls = decode(10**9)
    assert [c[:2] for c in cached_calls] == [(True, 2), (True, 1)] and [c[:2] for c in plain_calls] == [
        (False, 2),
        (False, 1),
    ]
    for (_, _, a), (_, _, b), rows in zip(cached_calls, plain_calls, ([0, 1], [2]), strict=True):
        for i, row in enumerate(rows):
            steps = a.shape[1] if cached[row] == plain[row] else 1  # after a different token the contexts differ
            assert torch.allclose(a[i, :steps], b[i, :steps], atol=1e-4), row
    assert sum(x == y for x, y in zip(cached, plain, strict=True)) >= 2


def test_api_baseline_is_skipped_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "api.json"
    rows = str(write_rows(tmp_path / "r.jsonl"))
    assert eval_api_main(["gpt-4.1-nano", "--data", rows, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["skipped"] == "OPENAI_API_KEY is not set"


@pytest.mark.slow
def test_api_baseline_against_local_server(local_server, monkeypatch):
    """Any OpenAI-compatible endpoint works: llama-cpp-python's server with the embedded SmolLM2."""
    monkeypatch.setenv("LOCAL_KEY", "not-needed")
    api = EvalApiConfig(base_url=local_server, api_key_env="LOCAL_KEY", max_attempts=2, schema_format="json_object")
    examples = [{"text": "add a soap", "action": "add", "product": "Soap", "quantity": 1, "language": "en"}]
    metrics, _, errors = evaluate(
        Variant("api:smollm2", "api", "smollm2", few_shot=True),
        ROWS[:1],
        EvalConfig(decoding=["free", "json_schema"], max_new_tokens=32),
        examples,
        None,
        api,
    )
    assert metrics["n"] == 1 and metrics["kl_from_merged"] is None and "API" in metrics["kl_note"]
    assert metrics["json_schema"]["json_valid"] == 1.0  # the server enforced the schema
    assert all(e["raw"] is not None for e in errors)


def in_a_project(tmp_path, monkeypatch):
    """tmp_path as the working directory of a project: params.yaml and the catalog it names."""
    from conftest import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copytree(ROOT / "ecommerce_slm" / "resources", tmp_path / "ecommerce_slm" / "resources")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)


def test_the_pipeline_eval_also_scores_the_handwritten_set_with_the_same_model(tiny_model_dir, tmp_path, monkeypatch):
    in_a_project(tmp_path, monkeypatch)
    write_rows(tmp_path / "data" / "eval.jsonl")
    write_rows(tmp_path / "data" / "handwritten.jsonl", ROWS[:1])
    assert main(["--model", str(tiny_model_dir)]) == 0
    stem = tiny_model_dir.name
    generated = json.loads((tmp_path / "metrics" / "eval" / f"{stem}.json").read_text())
    handwritten = json.loads((tmp_path / "metrics" / "handwritten" / f"{stem}.json").read_text())
    assert generated["n"] == 2 and generated["data"] == "data/eval.jsonl"
    assert handwritten["n"] == 1 and handwritten["data"] == "data/handwritten.jsonl"
    assert handwritten["data_sha256"] != generated["data_sha256"]
    details = json.loads((tmp_path / "metrics" / "handwritten" / f"{stem}.details.json").read_text())
    assert details["free"]["diagnostics"]["confusion"]["action"]["labels"][0] == "add"
    assert (tmp_path / "metrics" / "handwritten" / f"{stem}.errors.jsonl").exists()


def test_a_limit_of_ones_own_measures_kl_live_beside_a_saved_reference(tiny_model_dir, tmp_path, monkeypatch):
    """The saved reference covers the pipeline's rows; `--limit 1` asks for other rows, which is not stale."""
    in_a_project(tmp_path, monkeypatch)
    write_rows(tmp_path / "data" / "eval.jsonl")
    write_rows(tmp_path / "data" / "handwritten.jsonl", ROWS[:1])
    build_reference(ROWS, EvalConfig(kl_examples=2, perplexity_rows=0), tiny_model_dir, tmp_path / "none.gguf",
                    tmp_path / "models" / "kl_reference")  # fmt: skip
    assert main(["--model", str(tiny_model_dir), "--limit", "1"]) == 0
    metrics = json.loads((tmp_path / "metrics" / "eval" / f"{tiny_model_dir.name}.json").read_text())
    assert metrics["n"] == 1 and metrics["kl_note"] == "no reference model at models/merged"  # live, as by hand


def test_the_pipeline_eval_needs_the_handwritten_set(tiny_model_dir, tmp_path, monkeypatch, capsys):
    in_a_project(tmp_path, monkeypatch)
    write_rows(tmp_path / "data" / "eval.jsonl")
    assert main(["--model", str(tiny_model_dir)]) == 1
    assert "data/handwritten.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "metrics" / "eval").exists()  # nothing written before the check


def test_the_handwritten_set_is_valid_and_covers_every_language():
    from collections import Counter

    from conftest import ROOT

    from ecommerce_slm.catalog import load_catalog

    rows = load_rows(
        ROOT / "data" / "handwritten.jsonl", set(load_catalog(ROOT / "ecommerce_slm/resources/catalog.yaml", []).names)
    )
    assert min(Counter(r["language"] for r in rows).values()) >= 50
    assert len({r["text"].casefold() for r in rows}) == len(rows)
    assert set(Counter(r["action"] for r in rows)) == {"add", "remove"}


class ScriptedEngine:
    """Answers each request from a script, per mode, and records what it was asked to decode."""

    kind = "scripted"

    def __init__(self, free: list[str], constrained: list[str], greedy_under_grammar: bool = True):
        self.answers = {"free": free, "json_schema": constrained}
        self.greedy_under_grammar = greedy_under_grammar
        self.asked = []

    def generate(self, chats, schema=None):
        mode = "json_schema" if schema else "free"
        self.asked.append((mode, [c[-1]["content"] for c in chats]))
        return [self.answers[mode][int(c[-1]["content"])] for c in chats]


SCHEMA_ROWS = [
    {"text": str(i), "action": "add", "product": "Shampoo", "quantity": 2, "language": "en"} for i in range(3)
]
GOOD = Intent("add", "Shampoo", 2).to_json()


@pytest.mark.parametrize(
    "greedy, reuse, schema_decodes",
    [(True, True, ["1", "2"]), (True, False, ["0", "1", "2"]), (False, True, ["0", "1", "2"])],
)
def test_the_schema_pass_decodes_only_rows_whose_free_answer_the_grammar_would_change(greedy, reuse, schema_decodes):
    free = [GOOD, 'Sure! {"action": "add", "product": "Shampoo", "quantity": 2}', '{"action": "add"}']
    engine = ScriptedEngine(free, [GOOD] * 3, greedy_under_grammar=greedy)
    cfg = EvalConfig(catalog="", schema_reuses_free=reuse, kl_examples=0)
    metrics, details, errors = score_rows(engine, Variant("x", "transformers", "x"), SCHEMA_ROWS, cfg)
    assert engine.asked == [("free", ["0", "1", "2"]), ("json_schema", schema_decodes)]
    assert metrics["json_schema"]["free_answers_kept"] == 3 - len(schema_decodes)
    # the tolerant parser scores row 1 right in free mode too; only its grammar-constrained answer differs in form
    assert metrics["json_schema"]["exact_match"] == 1.0 and metrics["free"]["exact_match"] == 0.6667
    assert "free_answers_kept" not in metrics["free"] and all("free_answer_kept" not in e for e in errors)


def test_a_kept_free_answer_is_marked_in_the_errors():
    wrong = Intent("add", "Shampoo", 3).to_json()
    engine = ScriptedEngine([wrong, GOOD, "no"], [wrong, GOOD, wrong])
    _, _, errors = score_rows(engine, Variant("x", "transformers", "x"), SCHEMA_ROWS, EvalConfig(catalog=""))
    schema_errors = [(e["text"], e["free_answer_kept"]) for e in errors if e["mode"] == "json_schema"]
    assert schema_errors == [("0", True), ("2", False)]


def test_schema_reuses_free_must_be_a_boolean():
    with pytest.raises(Exception, match="schema_reuses_free"):
        EvalConfig(schema_reuses_free="yes")


def test_the_shortcut_tool_reports_kept_rows_and_what_a_full_schema_pass_would_differ_in():
    from tools.schema_shortcut import compare

    # row 2's free answer is kept; a full schema pass on a batched engine could answer it otherwise
    engine = ScriptedEngine([GOOD, "no", GOOD], [GOOD, GOOD, GOOD.replace("2}", "3}")])
    result = compare(engine, SCHEMA_ROWS, answer_schema())
    assert result["free_answers_kept"] == 2 and result["same_raw_where_kept"] == 1
    assert result["same_answer"] == 2 and result["differences"][0]["free_answer_kept"] is True
    assert result["exact_match"] == {"free": 0.6667, "schema_every_row": 0.6667, "schema_shortcut": 1.0}
