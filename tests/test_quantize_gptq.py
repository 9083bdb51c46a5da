"""quantize_gptq on a tiny random Llama (256 wide: group size 64 divides every layer)."""

import json

import pytest
import torch
from safetensors import safe_open

from ecommerce_slm.files import write_jsonl
from ecommerce_slm.gptq import GptqError, load_gptq
from ecommerce_slm.params import ParamError
from stages.quantize_gptq import GptqConfig, calibration_texts, check_group_size, quantize, resolve_dtype

SMOLLM2_135M = {"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64, "intermediate_size": 1536}


def test_group_size_must_divide_every_layer_width():
    check_group_size(64, SMOLLM2_135M, "config.json")
    check_group_size(-1, SMOLLM2_135M, "config.json")
    with pytest.raises(ParamError, match=r"gptq.group_size: 128 does not divide .*576.* such as 64"):
        check_group_size(128, SMOLLM2_135M, "models/merged/config.json")


def test_bad_gptq_params():
    with pytest.raises(ParamError, match="gptq.bits: expected 2, 3, 4 or 8"):
        GptqConfig.from_dict({"bits": 5})
    with pytest.raises(ParamError, match="gptq.calibration_samples: expected a positive integer"):
        GptqConfig.from_dict({"calibration_samples": 0})
    with pytest.raises(ParamError, match="gptq.dtype: expected auto, float32, bfloat16 or float16, got 'fp8'"):
        GptqConfig.from_dict({"dtype": "fp8"})
    with pytest.raises(ParamError, match="gptq.batch_size: expected a positive integer, got 0"):
        GptqConfig.from_dict({"batch_size": 0})


@pytest.mark.parametrize(
    "name, device, flags, expected",
    [
        # gptqmodel's own choice on every CPU is bfloat16: emulated on AVX2, where it quantized 3.6x slower
        ("auto", "cpu", ["avx2", "fma"], "float32"),
        ("auto", "cpu", ["avx2", "avx512f", "avx512_bf16"], "bfloat16"),
        ("auto", "cpu", ["avx2", "amx_bf16"], "bfloat16"),
        ("bfloat16", "cpu", ["avx2"], "bfloat16"),  # an explicit choice is kept
    ],
)
def test_calibration_dtype_auto_follows_the_hardware(name, device, flags, expected):
    assert resolve_dtype(name, device, flags) == expected


def test_calibration_is_seeded_and_holds_prompt_and_answer(real_tokenizer):
    rows = [{"text": f"add {i} soaps", "action": "add", "product": "Soap", "quantity": i} for i in range(1, 30)]
    first = calibration_texts(rows, real_tokenizer, 5, seed=1)
    assert (
        first
        == calibration_texts(rows, real_tokenizer, 5, seed=1)
        != calibration_texts(rows, real_tokenizer, 5, seed=2)
    )
    assert '"action": "add"' in first[0] and "soaps" in first[0]
    with pytest.raises(GptqError, match="training split has 29 rows"):
        calibration_texts(rows, real_tokenizer, 30, seed=1)


@pytest.mark.slow
def test_checkpoint_reloads_as_gptq_close_to_full_precision(tiny_wide_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    train = tmp_path / "train.jsonl"
    write_jsonl(
        train,
        [
            {"text": f"please add {i} bars of soap", "action": "add", "product": "Soap", "quantity": i}
            for i in range(1, 41)
        ],
    )
    log = tmp_path / "quant_log.csv"
    info = quantize(
        GptqConfig(calibration_samples=32, device="cpu"), tiny_wide_model_dir, train, tmp_path / "gptq", log
    )
    # its timings would change the model folder's hash on every rerun: kept beside it instead
    assert not (tmp_path / "gptq" / "quant_log.csv").exists()
    assert log.read_text().startswith("layer,module,loss")
    assert info["bits"] == 4 and info["group_size"] == 64 and info["quantize_seconds"] > 0
    assert info["dtype"] == resolve_dtype("auto", "cpu")  # this machine's native choice, not gptqmodel's bf16
    # embeddings and norms are stored in bf16 whatever the calibration ran in: the size does not depend on the CPU
    assert info["stored_dtype"] == "bfloat16"
    with safe_open(tmp_path / "gptq" / "model.safetensors", framework="pt") as f:
        floats = {
            f.get_slice(k).get_dtype() for k in f.keys() if not k.endswith(("qweight", "qzeros", "g_idx", "scales"))
        }
    assert floats == {"BF16"}
    saved = json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"]
    assert saved["bits"] == 4 and saved["group_size"] == 64 and saved.get("checkpoint_format", "gptq") == "gptq"

    tokenizer = AutoTokenizer.from_pretrained(tiny_wide_model_dir)
    batch = tokenizer(["please add 3 bars of soap to my cart"], return_tensors="pt")
    full = AutoModelForCausalLM.from_pretrained(tiny_wide_model_dir).eval()
    reloaded = load_gptq(tmp_path / "gptq")
    assert type(reloaded.model.layers[0].mlp.down_proj).__name__ != "Linear"  # a GPTQ kernel, not a float layer
    # The same tensors read as plain float weights (the quantize config ignored) are noise: packed
    # int32 qweight never reaches the layers, so the test can tell a real GPTQ load from a broken one.
    plain_config = LlamaConfig.from_pretrained(tmp_path / "gptq")
    del plain_config.quantization_config
    broken = LlamaForCausalLM.from_pretrained(tmp_path / "gptq", config=plain_config).eval()
    with torch.no_grad():
        expected, ours, theirs = (m(**batch).logits for m in (full, reloaded, broken))

    def relative_error(logits):
        return ((logits.float() - expected).abs().mean() / expected.abs().mean()).item()

    # 4 bits on random Gaussian weights lose more than on trained ones; noise loses everything
    assert relative_error(ours) < 0.3, relative_error(ours)
    assert relative_error(theirs) > 3 * relative_error(ours), (relative_error(theirs), relative_error(ours))


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes of GPTQ's int32-packed qweight (8 per word)."""
    return torch.stack([(packed >> (4 * i)) & 0xF for i in range(8)])


@pytest.mark.slow
def test_batched_calibration_leaves_the_padding_out(tiny_wide_model_dir, tmp_path):
    """Requests of 5 to 74 words, 8 to a batch: the padding must not reach the Hessians.

    The first layer sees the same inputs however the requests are batched, so its codes must be the ones
    calibrating one request at a time gives (measured: 99.99% equal; with gptqmodel's keep-mask switched
    off, 88%). Later layers drift with the rounding of the quantized layers before them, by float
    summation order alone, so they are not compared."""
    train = tmp_path / "train.jsonl"
    words = "please add some bars of my favourite lavender soap to the cart right now".split() * 6
    rows = [
        {"text": " ".join(words[: 2 + 3 * i]) + f" {i}", "action": "add", "product": "Soap", "quantity": i}
        for i in range(1, 25)
    ]
    write_jsonl(train, rows)
    codes = {}
    for batch_size in (1, 8):
        out = tmp_path / f"gptq-{batch_size}"
        cfg = GptqConfig(calibration_samples=24, batch_size=batch_size, device="cpu")
        assert quantize(cfg, tiny_wide_model_dir, train, out)["batch_size"] == batch_size
        with safe_open(out / "model.safetensors", framework="pt") as f:
            first_layer = sorted(k for k in f.keys() if k.startswith("model.layers.0.") and k.endswith("qweight"))
            codes[batch_size] = torch.cat([nibbles(f.get_tensor(k)).flatten() for k in first_layer])
    same = (codes[1] == codes[8]).float().mean().item()
    assert same > 0.99, same


def test_missing_merged_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="run merge"):
        quantize(GptqConfig(), tmp_path, tmp_path / "train.jsonl", tmp_path / "out")
