"""The DVC project itself: a valid DAG, params each stage declares, and a config that phones nowhere."""

import configparser
import json
import re

import yaml
from conftest import ROOT, run_cli

EXPECTED_STAGES = {
    "prepare_base",
    "synthesize",
    "train",
    "merge",
    "quantize_gptq",
    "convert_gguf",
    "imatrix",
    "quantize_gguf",
    "kl_reference",
    "eval",
    "load_test",
    "eval_gguf",
    "eval_api",
    "hardware",
    "bench",
    "bench_gguf",
    "report",
}


def expanded_stages() -> set[str]:
    """Every stage DVC sees, matrix and foreach expanded (eval@merged, quantize_gguf@Q4_K_M, ...)."""
    return set(run_cli(["dvc", "stage", "list", "--name-only"]).stdout.split())


def test_dag_is_valid_and_has_the_stages():
    run_cli(["dvc", "dag", "--md"])  # fails on a cycle or a broken dvc.yaml
    assert {name.split("@")[0] for name in expanded_stages()} == EXPECTED_STAGES


def test_repro_dry_run_succeeds():
    # --force: in a fresh clone models/base does not exist yet, and a plain --dry then fails on the
    # first stage that depends on a folder an earlier stage makes (DVC 3.67 hashes deps even when dry)
    result = run_cli(["dvc", "repro", "--dry", "--force"])
    assert "ERROR" not in result.stderr
    ran = set(re.findall(r"Running stage '([^']+)'", result.stdout))
    assert ran == expanded_stages() and "quantize_gguf@Q4_K_M" in ran


def test_report_is_downstream_of_every_eval_and_bench():
    out = run_cli(["dvc", "dag", "--outs", "--dot", "report"]).stdout
    for path in (
        "metrics/eval/Q4_K_M.json",
        "metrics/eval/gptq.json",
        "metrics/bench/merged.json",
        "metrics/bench/Q3_K_M.json",
        "metrics/hardware.json",
    ):
        assert f'"{path}"' in out, path


def test_variants_measure_kl_against_the_saved_reference_not_the_models_it_came_from():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    gguf_deps = stages["eval_gguf"]["deps"]
    assert "models/kl_reference" in gguf_deps and not {"models/merged", "models/gguf/F16.gguf"} & set(gguf_deps)
    foreach = stages["eval"]["foreach"]
    assert foreach["gptq"]["input"] == foreach["F16"]["input"] == "models/kl_reference"
    assert (
        foreach["base"]["input"] == "data/train.jsonl"
    )  # the untuned base is never compared: training never reruns it


def test_pareto_plots_use_the_custom_template_and_the_offline_page():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    plots = {next(iter(p)): next(iter(p.values())) for p in dvc_yaml["plots"]}
    assert set(plots) == {f"metrics/pareto/{a}.json" for a in ("peak_rss_mib", "generation_tokens_per_s", "file_mib")}
    assert all(p["template"] == "pareto" and p["y"] == "exact_match" for p in plots.values())
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["plots"]["html_template"] == "offline_page.html"  # relative to .dvc/, written by make install


def test_status_knows_only_the_stages_of_dvc_yaml():
    status = json.loads(run_cli(["dvc", "status", "--json"]).stdout or "{}")
    assert set(status) <= expanded_stages() | {"dvc.yaml"}, set(status) - expanded_stages()


def test_each_stage_declares_the_params_section_it_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) >= EXPECTED_STAGES
    assert stages["prepare_base"]["params"] == ["base"]
    assert stages["synthesize"]["params"] == ["data"]
    assert stages["train"]["params"] == ["train"]
    assert stages["merge"]["params"] == ["merge"]
    assert stages["quantize_gptq"]["params"] == ["gptq"]
    assert stages["quantize_gguf"]["params"] == ["gguf.threads"]  # not gguf.levels: adding a level reruns only it
    assert stages["eval"]["do"]["params"] == ["eval"]
    assert stages["bench"]["do"]["params"] == stages["bench_gguf"]["params"] == ["bench"]
    assert stages["report"]["params"] == ["report", "gguf.levels"]
    # only what shapes the reference: a change of eval.parallel or max_new_tokens keeps it
    assert stages["kl_reference"]["params"] == [
        "eval.kl_examples",
        "eval.perplexity_rows",
        "eval.perplexity_context",
        "eval.threads",
        "eval.limit",
    ]
    # the checkpoint folder is scratch: were it declared, its absence in a queued experiment's workspace would retrain
    assert "checkpoints" not in str(stages["train"]["outs"])


def test_paper_preset_is_valid_and_matches_its_one_liner():
    from stages.train import TrainConfig

    text = (ROOT / "presets" / "paper.yaml").read_text()
    preset = yaml.safe_load(text)["train"]
    TrainConfig.from_dict(preset)
    line = next(row for row in text.splitlines() if "dvc exp run" in row)
    flags = dict(f.split("=", 1) for f in line.split("-S ")[1:])
    assert {k.strip().removeprefix("train."): yaml.safe_load(v) for k, v in flags.items()} == preset


def test_dvc_config_sends_nothing_home():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["core"]["analytics"] == "false"
    assert config["core"]["check_update"] == "false"


def test_dvc_yaml_variant_lists_match_the_variants_module():
    from ecommerce_slm.variants import MEASURED_VARIANTS, REFERENCE, REFERENCE_VARIANTS, resolve

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages["eval"]["foreach"]) == {*MEASURED_VARIANTS, *REFERENCE_VARIANTS}
    assert set(stages["bench"]["foreach"]) == set(MEASURED_VARIANTS)
    for name, item in stages["eval"]["foreach"].items():
        variant = resolve(name)
        assert variant.location == item["model"], name
        # the few-shot base reads training rows as examples and is never compared with merged; merged is its
        # own reference; the rest are compared through the reference saved from it
        expected = "models/merged" if name == REFERENCE else "models/kl_reference"
        assert item["input"] == ("data/train.jsonl" if variant.few_shot else expected), name
    for name, location in stages["bench"]["foreach"].items():
        assert resolve(name).location == location, name
