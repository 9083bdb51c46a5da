import json
import shutil

import pytest
from conftest import ROOT, run_cli

from ecommerce_slm.params import ParamError
from stages.prepare_base import BaseConfig, ModelSourceError, load_base, resolve_source, save_base


def test_embedded_source_is_found_in_the_wheel():
    source = resolve_source("embedded:SmolLM2-135M-Instruct")
    assert source.kind == "embedded" and source.gguf_file.endswith(".gguf")


@pytest.mark.parametrize(
    "model, error, message",
    [
        ("embedded:Nope-1B", ParamError, "unknown embedded model 'Nope-1B'"),
        ("./no/such/folder", ModelSourceError, "folder './no/such/folder' not found"),
        ("missing.gguf", ModelSourceError, "GGUF file 'missing.gguf' not found"),
    ],
)
def test_bad_sources_say_what_is_wrong(model, error, message):
    with pytest.raises(error, match=message.replace(".", r"\.").replace("/", "/")):
        resolve_source(model)


def test_unreachable_hub_model_says_which_and_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as err:
        load_base(BaseConfig(model="meta-llama/Llama-3.2-1B-Instruct"))
    message = str(err.value)
    assert "meta-llama/Llama-3.2-1B-Instruct" in message and "huggingface-cli download" in message


def test_local_folder_round_trip(tiny_model_dir, tmp_path):
    model, tokenizer, source = load_base(BaseConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    assert source.kind == "folder" and str(model.dtype) == "torch.bfloat16"
    out = tmp_path / "models" / "base"
    save_base(model, tokenizer, out, {"model": str(tiny_model_dir)})
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert not list(out.parent.glob(".base.pid*"))  # no temporary folder left behind


def test_failed_save_leaves_nothing_half_written(tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = load_base(BaseConfig(model=str(tiny_model_dir)))
    monkeypatch.setattr(tokenizer, "chat_template", None)
    out = tmp_path / "base"
    with pytest.raises(ModelSourceError, match="no chat template"):
        save_base(model, tokenizer, out, {"model": "tiny"})
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_stage_on_the_embedded_default(tmp_path):
    """The real stage on the real default: dequantized safetensors that still answer a simple question."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    run_cli(["python", "-m", "stages.prepare_base"], cwd=tmp_path)
    out = tmp_path / "models" / "base"
    info = json.loads((out / "base_info.json").read_text())
    assert "Paris" in info["sanity_answer"]
    assert info["parameters"] > 100e6 and info["dtype"] == "float32"
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # plain float weights, loadable with any quantizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).count("<|im_start|>") >= 2
