"""tools.cuda_check: what it counts as a pass (its GPU run is docs/cuda_check_h100.json), and its refusal on a CPU."""

import copy
import json

import pytest
import torch

from tools.cuda_check import failures, main

PASSING_NF4 = json.loads(
    """{"train": {"device": "cuda", "compute_dtype": "bfloat16", "attention": "sdpa", "first_loss": 9.49,
                  "final_loss": 4.52, "validation_exact_match": 0.0},
        "base_weights": {"linear4bit_layers": 14, "adapted_layers": 14, "quant_type": "nf4", "devices": ["cuda:0"]},
        "merge": {"device": "cuda", "dtype": "float32", "relative_logit_diff": 9.2e-7, "tolerance": 1e-4}}"""
)


def with_change(section, key, value):
    result = copy.deepcopy(PASSING_NF4)
    result[section][key] = value
    return result


def test_a_passing_run_has_no_failures():
    assert failures("nf4", PASSING_NF4, has_bf16=True) == []


@pytest.mark.parametrize(
    ("section", "key", "value", "failed"),
    [
        ("train", "device", "cpu", "nf4: trained on cuda"),
        ("train", "validation_exact_match", None, "nf4: validation answers decoded by the model on the GPU"),
        ("base_weights", "devices", ["cpu", "cuda:0"], "nf4: trained on cuda"),
        ("train", "compute_dtype", "float32", "nf4: compute dtype bfloat16 (auto)"),
        ("train", "attention", "eager", "nf4: sdpa attention (auto on a GPU)"),
        ("train", "final_loss", 9.6, "nf4: loss fell"),
        ("base_weights", "linear4bit_layers", 0, "nf4: every adapted linear layer is 4-bit NF4"),
        ("base_weights", "quant_type", "fp4", "nf4: every adapted linear layer is 4-bit NF4"),
        ("merge", "dtype", "bfloat16", "nf4: merged on cuda in float32 within tolerance"),
        ("merge", "relative_logit_diff", 2e-4, "nf4: merged on cuda in float32 within tolerance"),
        ("base_weights", "adapted_layers", 21, "nf4: every adapted linear layer is 4-bit NF4"),
    ],
)
def test_each_check_can_fail(section, key, value, failed):
    assert failures("nf4", with_change(section, key, value), has_bf16=True) == [failed]


def test_auto_dtype_is_float32_on_a_gpu_without_bf16():
    assert failures("nf4", PASSING_NF4, has_bf16=False) == ["nf4: compute dtype float32 (auto)"]
    plain = with_change("base_weights", "linear4bit_layers", 0)
    assert failures("none", plain, has_bf16=True) == []  # plain LoRA has no 4-bit layers to count


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out.json")]) == 1
    assert "no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
