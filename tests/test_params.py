"""Every params.yaml section validates itself: an unknown key, a wrong type and an out-of-range value each
give a one-line error naming `section.key` and what was expected; CLI flags go through the same checks."""

import importlib

import pytest
import yaml
from conftest import ROOT

from ecommerce_slm.params import SECTIONS, ParamError, read_params

for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
    importlib.import_module(f"stages.{name}")  # each stage module registers its own section's dataclass

WRONG_TYPE = {bool: "yes", int: "many", float: "lots", str: 5, list: "x"}


ALL_FIELDS = [(section, key, kind) for section, cls in sorted(SECTIONS.items()) for key, kind in cls.keys()]


def build(section, key, value):
    """The section's dataclass from a mapping that sets only `key` (dotted below the section)."""
    values: dict = {}
    node = values
    parts = key.split(".")[1:]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return SECTIONS[section].from_dict(values)


def test_every_params_section_has_its_dataclass_and_validates():
    params = read_params(ROOT / "params.yaml")
    assert set(params) == set(SECTIONS)
    for section, values in params.items():
        SECTIONS[section].from_dict(values)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_an_unknown_key_is_named(section):
    with pytest.raises(ParamError) as err:
        SECTIONS[section].from_dict({"no_such_knob": 1})
    assert f"params.yaml: {section}.no_such_knob: unknown key (known: " in str(err.value)


@pytest.mark.parametrize("section, key, kind", ALL_FIELDS, ids=[f[1] for f in ALL_FIELDS])
def test_a_wrong_type_is_named_for_every_key(section, key, kind):
    value = WRONG_TYPE.get(kind, {"a": 1})  # Any: a mapping is never a valid value
    with pytest.raises(ParamError) as err:
        build(section, key, value)
    message = str(err.value)
    assert message.startswith(f"params.yaml: {key}: expected ") and "\n" not in message, message


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("base.dtype", "int8", "expected auto, float32, bfloat16 or float16"),
        ("base.model", "  ", "expected a model id, folder or embedded:NAME"),
        ("data.n_examples", 0, "expected an integer >= 2"),
        ("data.noise.typo", 1.5, "expected a rate in [0, 1], got 1.5"),
        ("data.quantity.max", 500, "expected an integer in 1..99"),
        ("data.quantity.words_cover_share", 1.5, "expected a rate in [0, 1], got 1.5"),
        ("data.quantity.training_words_share", -0.1, "expected a rate in [0, 1], got -0.1"),
        ("data.metaprompt.temperature", 3, "expected a number in [0, 2]"),
        ("train.lora_dropout", 1.0, "expected a rate in [0, 1)"),
        ("train.neftune_alpha", -1.0, "expected a number >= 0 (0: off)"),
        ("train.max_steps", 0, "expected auto, a positive integer, or -1 to use epochs"),
        ("train.max_steps", "many", "expected auto, a positive integer, or -1 to use epochs"),
        ("train.auto_steps", {"float32": 220}, "expected a step count (positive integer) for each of float32,"),
        ("train.auto_steps", {"float32": 0, "bfloat16": 1, "float16": 1}, "expected a step count (positive"),
        ("train.learning_rate", 2, "expected auto or a number in (0, 1)"),
        ("train.auto_learning_rate", {"float32": 2e-3}, "expected a learning rate in (0, 1) for each of float32,"),
        ("merge.tolerance", -1, "expected auto or a number > 0"),
        ("gptq.bits", 5, "expected 2, 3, 4 or 8"),
        ("gptq.damp_percent", 1.5, "expected a number in (0, 1)"),
        ("gguf.threads", 0, "expected a positive integer"),
        ("eval.limit", -1, "expected an integer >= 0"),
        ("eval.decoding", ["greedy"], "expected a list of modes from ['free', 'json_schema']"),
        ("eval_api.max_attempts", 0, "expected a positive integer"),
        ("eval_api.schema_format", "xml", "expected json_schema or json_object"),
        ("bench.new_tokens", 1, "expected at least 2"),
        ("report.decoding", "beam", "expected one of ['free', 'json_schema']"),
        ("serve.parallel", 0, "expected a positive integer"),
        ("serve.load_test.clients", [1, 0], "expected a non-empty list of positive integers"),
        ("eval.gguf_engine", "vllm", "expected one of ['server', 'binding']"),
        ("gguf.imatrix_rows", 0, "expected a positive integer"),
    ],
)
def test_an_out_of_range_value_is_named(key, value, expected):
    with pytest.raises(ParamError) as err:
        build(key.split(".")[0], key, value)
    assert str(err.value).startswith(f"params.yaml: {key}: {expected}"), str(err.value)


def test_every_section_has_an_out_of_range_case():
    cases = test_an_out_of_range_value_is_named.pytestmark[0].args[1]
    assert {key.split(".")[0] for key, _, _ in cases} == set(SECTIONS)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("train.batch_size", True, "expected an integer, got True"),  # YAML's true is not 1
        ("train.max_steps", True, "expected auto, a positive integer, or -1 to use epochs, got True"),
        ("train.epochs", float("inf"), "expected a finite number, got inf"),
        ("data.seed", True, "expected an integer, got True"),
        ("eval.limit", True, "expected an integer, got True"),
    ],
)
def test_bools_and_infinities_are_not_numbers(key, value, expected):
    with pytest.raises(ParamError, match=f"{key}: {expected}"):
        build(key.split(".")[0], key, value)


def test_a_learning_rate_written_2e_5_is_a_number():
    # YAML 1.1 reads 2e-5 (no dot) as a string; users write learning rates that way
    assert build("train", "train.learning_rate", yaml.safe_load("2e-5")).learning_rate == 2e-5


@pytest.mark.parametrize(
    "levels, expected",
    [
        (["Q9_K"], "gguf.levels[0]: expected a llama.cpp quant type"),
        (["Q4_K_M", "Q4_K_M"], "gguf.levels: expected no level listed twice"),
        (["IQ2_XXS-imat"], "gguf.levels[0]: IQ2_XXS always uses the importance matrix"),
    ],
)
def test_gguf_levels_come_from_llama_cpps_table(levels, expected):
    with pytest.raises(ParamError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        SECTIONS["gguf"].from_dict({"levels": levels})


def test_quant_levels_are_derived_not_retyped():
    import gguf

    from ecommerce_slm.gguf_file import main_type, quant_levels

    levels = quant_levels()
    assert {"Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS"} <= set(levels)
    assert "F16" not in levels and "IQ2_XXS" in levels  # IQ2_XXS: with the importance matrix only
    assert all(f"MOSTLY_{level}" in gguf.LlamaFileType.__members__ for level in levels)
    assert {level: main_type(level) for level in ("Q3_K_M", "Q4_K_S", "Q8_0", "IQ4_XS", "IQ3_M")} == {
        "Q3_K_M": "Q3_K",
        "Q4_K_S": "Q4_K",
        "Q8_0": "Q8_0",
        "IQ4_XS": "IQ4_XS",
        "IQ3_M": "IQ3_S",
    }


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  lora_r: 8\n  lora_alpha: [16\n")
    with pytest.raises(ParamError, match=r"params.yaml:\d+: not valid YAML"):
        read_params(bad)


def cli(module, *args):
    from conftest import run_cli

    return run_cli(["python", "-m", module, *args], check=False)


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["stages.eval", "--variant", "merged", "--limit", "-1"],
            "eval: error: --limit: eval.limit: expected an integer >= 0, got -1",
        ),
        (["stages.eval", "--variant", "Q9_K"], "eval: error: unknown variant 'Q9_K'"),
        (["stages.quantize_gguf", "Q9_K"], "quantize_gguf: error: level: expected a llama.cpp quant type"),
        (["stages.eval_gguf", "Q4_K_M-imatrix"], "eval_gguf: error: level: expected a llama.cpp quant type"),
        (["stages.bench_gguf", "Q9_K"], "bench_gguf: error: level: expected a llama.cpp quant type"),
        (
            ["tools.train_step_bench", "--variant", "x=lora_r=0"],
            "train_step_bench: error: --variant x: train.lora_r: expected a positive integer",
        ),
    ],
)
def test_cli_flags_go_through_the_same_checks(args, expected):
    result = cli(*args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(expected), (
        result.stderr
    )


def test_moved_modules_name_their_new_home():
    result = cli("stages.evaluate", "--variant", "merged")
    assert result.returncode != 0 and "stages.evaluate has moved: use python -m stages.eval" in result.stderr
    assert "tools.prune" in cli("stages.prune").stderr
