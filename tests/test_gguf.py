"""convert_gguf + quantize_gguf on tiny random Llamas: each file is what it claims, the template survives."""

import pytest

from ecommerce_slm.gguf_file import GgufConfig, chat_template, describe
from ecommerce_slm.params import ParamError
from ecommerce_slm.task import prompt_messages
from stages.convert_gguf import ConvertError, convert, converter_path
from stages.quantize_gguf import quantize

pytestmark = pytest.mark.slow

# Types llama.cpp may choose within each level (its mixes bump some tensors, e.g. attn_v/ffn_down, up a step).
K_QUANT_TYPES = {
    "Q3_K_M": {"Q3_K", "Q4_K", "Q5_K", "Q6_K"},
    "Q4_K_M": {"Q4_K", "Q5_K", "Q6_K"},
    "Q5_K_M": {"Q5_K", "Q6_K"},
    "Q8_0": {"Q8_0"},
}


@pytest.fixture(scope="module")
def wide_f16(tiny_wide_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "F16.gguf"
    convert(tiny_wide_model_dir, out)
    return out


@pytest.mark.parametrize("level", list(K_QUANT_TYPES))
def test_each_level_has_the_tensor_types_it_claims(wide_f16, level):
    out = wide_f16.with_name(f"{level}.gguf")
    _, log = quantize(wide_f16, out, level, threads=2)
    info = describe(out, level, log)
    assert info["file_type"] == level
    weights = {t for t in info["tensor_types"] if t != "F32"}  # norms stay F32 in every level
    assert weights <= K_QUANT_TYPES[level] | {"Q8_0", "Q6_K"} and weights & K_QUANT_TYPES[level], info["tensor_types"]
    assert info["fallback_tensors"] == 0 and info["fallbacks"] == {}
    assert info["bits_per_weight"] < 16


def test_narrow_rows_fall_back_and_the_json_says_so(tiny_model_dir, tmp_path):
    f16 = tmp_path / "F16.gguf"
    convert(tiny_model_dir, f16)  # 64-wide rows: no k-quant block of 256 fits
    out = tmp_path / "Q4_K_M.gguf"
    _, log = quantize(f16, out, "Q4_K_M", threads=2)
    info = describe(out, "Q4_K_M", log)
    assert info["fallback_tensors"] > 0 and info["fallbacks"].get("q4_K->q5_0", 0) > 0
    assert "Q4_K" not in info["tensor_types"]
    assert info["bits_per_weight"] > info["nominal_bits_per_weight"] == 4.5


def test_f16_is_f16(wide_f16):
    info = describe(wide_f16, "F16")
    assert info["file_type"] == "F16" and set(info["tensor_types"]) <= {"F16", "F32"}


def test_chat_template_and_special_tokens_survive_conversion(wide_f16, real_tokenizer):
    """The same prompt, rendered by the HF tokenizer and by the GGUF's own template and vocab, gives the same ids."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = chat_template(wide_f16)
    assert template == real_tokenizer.chat_template
    messages = prompt_messages("Bok, ubaci dvije paste za zube u košaricu pls 🛒")
    expected = real_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    llm = llama_cpp.Llama(str(wide_f16), vocab_only=True, verbose=False)
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    text = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected
    assert (llm.token_eos(), llm.token_bos()) == (real_tokenizer.eos_token_id, real_tokenizer.bos_token_id)


def test_unknown_level_is_rejected(wide_f16, tmp_path):
    with pytest.raises(ParamError, match="expected a llama.cpp quant type"):
        quantize(wide_f16, tmp_path / "x.gguf", "Q4_K_X", threads=2)
    with pytest.raises(ParamError, match=r"gguf.levels\[1\]: expected a llama.cpp quant type"):
        GgufConfig.from_dict({"levels": ["Q4_K_M", "Q4_K_X"]})


def test_missing_converter_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(tmp_path / "nope.py"))
    with pytest.raises(ConvertError, match="make install"):
        converter_path()


def test_no_half_written_file_when_the_converter_fails(tmp_path, tiny_model_dir, monkeypatch):
    fake = tmp_path / "convert_hf_to_gguf.py"  # writes half a file, then fails, as a crashing converter does
    fake.write_text(
        "import sys\nopen(sys.argv[sys.argv.index('--outfile') + 1], 'wb').write(b'GGUF half')\n"
        "sys.exit('converter: out of memory')\n"
    )
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(fake))
    out = tmp_path / "gguf" / "F16.gguf"
    with pytest.raises(ConvertError, match="out of memory"):
        convert(tiny_model_dir, out)
    assert list(out.parent.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="run merge"):
        convert(tmp_path / "no-model", out)
