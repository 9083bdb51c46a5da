"""Merge on a tiny random Llama with a non-trivial adapter (LoRA B != 0)."""

import pytest
import torch

from ecommerce_slm.params import ParamError
from stages.merge import MergeConfig, MergeError, merge, merge_dtype, non_float_tensors, save_merged


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )  # random B: merging must change the weights
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_merged_logits_match_base_plus_adapter(tiny_model_dir, adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    merged, tokenizer, report = merge(MergeConfig(dtype="float32"), tiny_model_dir, adapter_dir)
    assert report["relative_logit_diff"] < 1e-4 and report["dtype"] == "float32"
    assert non_float_tensors(merged) == []
    assert not any("lora" in name for name, _ in merged.named_parameters())
    save_merged(merged, tokenizer, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(reloaded.state_dict()[q], base.state_dict()[q])  # the adapter is in the weights
    assert getattr(reloaded.config, "quantization_config", None) is None
    assert tokenizer.chat_template and (tmp_path / "merged" / "model.safetensors").exists()


def test_tolerance_is_enforced(tiny_model_dir, adapter_dir):
    with pytest.raises(MergeError, match="more than merge.tolerance"):
        merge(MergeConfig(dtype="bfloat16", tolerance=1e-12), tiny_model_dir, adapter_dir)


def test_auto_merges_in_float32_on_a_gpu_too(monkeypatch):
    # a bf16 merge on a GPU missed the tolerance for half of a sweep's adapters
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert merge_dtype(MergeConfig()) == torch.float32
    assert merge_dtype(MergeConfig(dtype="bfloat16")) == torch.bfloat16


def test_integer_tensors_are_reported():
    model = torch.nn.Linear(2, 2)
    model.register_buffer("packed", torch.zeros(2, dtype=torch.int32))
    assert non_float_tensors(model) == ["packed (Tensor, torch.int32)"]


def test_missing_adapter(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing adapter"):
        merge(MergeConfig(), tiny_model_dir, tmp_path)


def test_bad_merge_params():
    with pytest.raises(ParamError, match="merge.tolerance: expected auto or a number > 0"):
        MergeConfig.from_dict({"tolerance": -1})
