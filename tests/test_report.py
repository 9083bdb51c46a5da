"""The report: aggregation, its errors, the frontier plot data and images, and pages that draw offline."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from ecommerce_slm.machine import fingerprint
from stages.report import AXES, ReportError, build_summary, instruction_sets, pareto_data, vega_spec, write_report
from tools.browser_check import BrowserError, check_pages, find_chromium

TEMPLATE_DIR = ROOT / ".dvc" / "plots"
HARDWARE = {**fingerprint(), "memory_bandwidth": {"best_gb_per_s": 40.0}}
# variant: (exact free, exact schema, KL, MiB, tok/s, peak RSS)
VARIANTS = {
    "merged": (0.58, 0.60, 0.0, 513.2, 18.0, 980.0),
    "gptq": (0.54, 0.56, 0.0115, 109.3, 42.0, 1066.0),
    "F16": (0.58, 0.60, 1e-6, 258.3, 80.0, 390.0),
    "Q4_K_M": (0.56, 0.57, 0.0035, 100.6, 140.0, 227.0),
    "Q3_K_M": (0.48, 0.51, 0.0274, 89.2, 130.0, 215.0),
}


CONFUSION = {"expected": "Running Shoes", "predicted": "Toothbrush", "count": 3}


def spread(v):
    return {"median": v, "min": v * 0.95, "max": v * 1.05, "relative_spread": 0.1}


def write_metrics(root: Path, variants=VARIANTS, hardware=HARDWARE) -> Path:
    metrics = root / "metrics"
    for name, (free, schema, kl, mib, tps, rss) in variants.items():
        ev = {
            "variant": name,
            "n": 300,
            "free": {"exact_match": free, "lenient_match": free, "json_valid": 1.0},
            "json_schema": {"exact_match": schema, "lenient_match": schema, "json_valid": 1.0},
            "kl_from_merged": kl,
            "data": "data/eval.jsonl",
            "data_sha256": "same-eval-file",
        }
        bench = {
            "variant": name,
            "engine": "llama_cpp" if name[0] in "FQ" else "transformers",
            "device": "cpu",
            "threads": 2,
            "repeats": 5,
            "file_mib": mib,
            "load_seconds": spread(0.5),
            "prompt_tokens_per_s": spread(500.0),
            "generation_tokens_per_s": spread(tps),
            "peak_rss_mib": spread(rss),
            "fraction_of_bound": 0.3,
            "energy": {"source": "rapl", "joules_per_generated_token": None, "reason": "no RAPL here"},
            "hardware": hardware,
        }
        if bench["engine"] == "llama_cpp":  # llama.cpp's own tools beside the project's numbers
            ev["engine"] = "llama_server"
            bench["llama_bench"] = {
                "generation_tokens_per_s": tps * 1.05,
                "prompt_tokens_per_s": 520.0,
                "ours_over_llama_bench": {"generation": round(1 / 1.05, 3), "prompt": round(500 / 520, 3)},
            }
            if name != "F16":
                ev["llama_perplexity"] = {"mean_kl": kl * 2, "same_top_token": 0.97}
        handwritten = {**ev, "n": 227, "data": "data/handwritten.jsonl", "kl_from_merged": None}
        handwritten["free"] = {**ev["free"], "exact_match": round(free + 0.1, 3)}
        details = {
            "free": {
                "by_language": {"en": 0.9, "hr": 0.7},
                "diagnostics": {"confusion": {"product": {"top": [CONFUSION] if name == "merged" else []}}},
            }
        }
        for sub, obj in (("eval", ev), ("bench", bench), ("handwritten", handwritten)):
            (metrics / sub).mkdir(parents=True, exist_ok=True)
            (metrics / sub / f"{name}.json").write_text(json.dumps(obj))
        for sub in ("eval", "handwritten"):
            (metrics / sub / f"{name}.details.json").write_text(json.dumps(details))
    (metrics / "variants").mkdir(exist_ok=True)
    (metrics / "variants" / "F16.json").write_text(json.dumps({"parameters": 134515008, "bits_per_weight": 16.0}))
    (metrics / "eval" / "api-gpt-4.1.json").write_text(
        json.dumps({"variant": "api:gpt-4.1", "skipped": "OPENAI_API_KEY is not set"})
    )
    return metrics


def test_summary_has_every_variant_and_the_frontiers(tmp_path):
    summary = build_summary(write_metrics(tmp_path), list(VARIANTS), "free")
    assert [r["variant"] for r in summary["variants"]] == list(VARIANTS)
    assert summary["frontiers"]["peak_rss_mib"] == ["Q3_K_M", "Q4_K_M", "F16"]  # merged: same accuracy, more RAM
    assert summary["frontiers"]["generation_tokens_per_s"] == ["F16", "Q4_K_M"]
    assert summary["frontiers"]["file_mib"] == ["Q3_K_M", "Q4_K_M", "F16"]
    gptq = next(r for r in summary["variants"] if r["variant"] == "gptq")
    assert gptq["bits_per_weight"] == 6.816  # 109.3 MiB over F16's 134,515,008 parameters
    assert summary["references"] == [{"variant": "api:gpt-4.1", "skipped": "OPENAI_API_KEY is not set"}]
    assert "hardware" not in gptq and summary["hardware"]["cpu"] == HARDWARE["cpu"]


def test_constrained_decoding_can_be_the_frontier_metric(tmp_path):
    summary = build_summary(write_metrics(tmp_path), list(VARIANTS), "json_schema")
    assert next(r for r in summary["variants"] if r["variant"] == "Q3_K_M")["exact_match"] == 0.51


def test_a_missing_variant_is_a_clear_error(tmp_path):
    metrics = write_metrics(tmp_path)
    (metrics / "bench" / "Q4_K_M.json").unlink()
    with pytest.raises(ReportError, match=r"bench/Q4_K_M.json: missing for variant Q4_K_M"):
        build_summary(metrics, list(VARIANTS), "free")
    with pytest.raises(ReportError, match=r"eval/Q5_K_M.json: missing"):
        build_summary(metrics, ["merged", "Q5_K_M"], "free")


def test_results_from_two_machines_are_never_mixed(tmp_path):
    other = {**HARDWARE, "cpu": {"model": "Another CPU", "flags": []}}
    metrics = write_metrics(tmp_path)
    write_metrics(tmp_path, {"Q3_K_M": VARIANTS["Q3_K_M"]}, hardware=other)
    with pytest.raises(ReportError, match="different machines"):
        build_summary(metrics, list(VARIANTS), "free")


def test_instruction_sets_tell_the_three_cpu_classes_apart():
    assert instruction_sets(["avx2", "f16c", "fma"]) == "AVX2, no AMX"  # Zen 2: float32 training
    assert instruction_sets(["avx2", "avx512_bf16", "avx512f"]) == "AVX2, AVX-512, AVX512_BF16, no AMX"  # Zen 4
    assert instruction_sets(["amx_bf16", "avx2", "avx512_bf16", "avx512f"]) == "AVX2, AVX-512, AVX512_BF16, AMX"
    assert instruction_sets([]) == "no AVX2, no AMX"


def test_plot_data_marks_frontier_and_dominated():
    rows = [
        {"variant": "a", "peak_rss_mib": 100.0, "exact_match": 0.5},
        {"variant": "b", "peak_rss_mib": 200.0, "exact_match": 0.4},
    ]
    assert pareto_data(rows, AXES[0]) == [
        {"variant": "a", "peak_rss_mib": 100.0, "exact_match": 0.5, "pareto": "frontier"},
        {"variant": "b", "peak_rss_mib": 200.0, "exact_match": 0.4, "pareto": "dominated"},
    ]


def test_png_spec_is_the_one_dvc_fills_from_the_template():
    data = [{"variant": "a", "file_mib": 1.0, "exact_match": 0.5, "pareto": "frontier"}]
    spec = vega_spec(data, AXES[2], "free", TEMPLATE_DIR)
    assert "<DVC_METRIC" not in json.dumps(spec)  # every anchor filled
    assert spec["data"]["values"][0]["rev"] == "workspace"
    assert spec["encoding"]["x"] == {**spec["encoding"]["x"], "field": "file_mib", "title": AXES[2].label}
    assert len(spec["layer"]) == 4  # frontier line, points, two kinds of labels: it is our template


def test_write_report_makes_table_plot_data_and_images(tmp_path):
    metrics = write_metrics(tmp_path)
    summary = build_summary(metrics, list(VARIANTS), "free")
    write_report(summary, metrics, tmp_path / "reports", TEMPLATE_DIR)
    for axis in AXES:
        data = json.loads((metrics / "pareto" / f"{axis.name}.json").read_text())
        assert {d["variant"] for d in data} == set(VARIANTS)
        png = (tmp_path / "reports" / f"pareto_{axis.name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = (tmp_path / "reports" / "summary.md").read_text()
    # header + variants + the skipped API row, then the per-language table's header + variants
    gguf = [name for name in VARIANTS if name[0] in "FQ"]
    assert table.count("\n| ") == len(VARIANTS) + 2 + len(VARIANTS) + 1 + len(gguf) + 1
    assert "| Q4_K_M | 140.0 / 147.0 (0.95) | 500 / 520 (0.96) | 0.0035 | 0.007 | 0.970 |" in table
    assert "| Q4_K_M | 0.560 | 0.570 | 0.660 | 0.570 |" in table and "skipped: OPENAI_API_KEY is not set" in table
    assert "| Q4_K_M | 0.900 / 0.900 | 0.700 / 0.700 |" in table  # per language: generated / handwritten
    # the first line names the CPU class, not only its model name
    assert table.startswith(f"Measured on {HARDWARE['cpu']['model']} ({instruction_sets(HARDWARE['cpu']['flags'])}; ")
    png = (tmp_path / "reports" / "product_confusions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["product_confusions"] == [
        {"pair": "Running Shoes -> Toothbrush", "count": 3, "set": "eval"},
        {"pair": "Running Shoes -> Toothbrush", "count": 3, "set": "handwritten"},
    ]
    assert "understates" in table  # the Q4_1 caveat travels with every table
    assert json.loads((metrics / "summary.json").read_text())["frontiers"] == summary["frontiers"]
    f16_row = next(line for line in table.splitlines() if line.startswith("| F16 |"))
    assert f16_row.endswith("| F/F/F |")  # on all three frontiers, as summary["frontiers"] says


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (make browser)")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """The plotly report and a `dvc plots show` page, with and without the offline template."""
    from dvc_render import VegaRenderer, render_html

    from tools.plots_page import offline_page

    root = tmp_path_factory.mktemp("pages")
    metrics = write_metrics(root)
    summary = build_summary(metrics, list(VARIANTS), "free")
    write_report(summary, metrics, root / "reports", TEMPLATE_DIR)
    template_dir = root / "templates"
    template_dir.mkdir()
    shutil.copy(ROOT / ".dvc" / "plots" / "pareto.json", template_dir)
    renderers = [
        VegaRenderer(
            [dict(d, rev="workspace") for d in json.loads((metrics / "pareto" / f"{a.name}.json").read_text())],
            a.name,
            template="pareto",
            template_dir=str(template_dir),
            x=a.name,
            y="exact_match",
        )
        for a in AXES
    ]
    (root / "offline.html").write_text(offline_page())
    render_html(renderers, root / "dvc_offline" / "index.html", html_template=str(root / "offline.html"))
    render_html(renderers, root / "dvc_cdn" / "index.html")  # DVC's default page: vega from a CDN
    return root


@needs_chromium
def test_pages_draw_in_chromium_with_the_network_off(pages):
    shots = pages / "shots"
    drawn = check_pages([pages / "dvc_offline" / "index.html", pages / "reports" / "report.html"], shots, minimum=3)
    assert list(drawn.values()) == [3, 3]  # three frontiers on each page
    assert sorted(p.name for p in shots.glob("*.png")) == ["dvc_offline-index.png", "reports-report.png"]


@needs_chromium
def test_the_check_fails_a_page_that_needs_a_cdn(pages):
    # the negative control: DVC's default template draws nothing offline, so the check can fail
    with pytest.raises(BrowserError, match="0 plots drew offline"):
        check_pages([pages / "dvc_cdn" / "index.html"], None)


def test_refuses_an_eval_measured_on_other_data(tmp_path):
    metrics = write_metrics(tmp_path)
    q8 = json.loads((metrics / "eval" / "Q4_K_M.json").read_text())
    (metrics / "eval" / "Q4_K_M.json").write_text(json.dumps({**q8, "data": "my.jsonl", "n": 3}))
    with pytest.raises(ReportError, match=r"Q4_K_M.json: measured on 'my.jsonl', not the pipeline's data/eval.jsonl"):
        build_summary(metrics, list(VARIANTS), "free")


def test_refuses_evals_of_different_versions_of_the_eval_file(tmp_path):
    metrics = write_metrics(tmp_path)
    gptq = json.loads((metrics / "eval" / "gptq.json").read_text())
    (metrics / "eval" / "gptq.json").write_text(json.dumps({**gptq, "data_sha256": "edited-since"}))
    with pytest.raises(ReportError, match="different versions of data/eval.jsonl"):
        build_summary(metrics, list(VARIANTS), "free")


def test_api_models_with_a_slash_are_found_in_their_subfolder(tmp_path):
    from ecommerce_slm.variants import resolve

    metrics = write_metrics(tmp_path)
    variant = resolve("api:meta-llama/Llama-3.1-8B-Instruct")
    out = metrics / "eval" / f"{variant.file_stem}.json"  # dvc.yaml: metrics/eval/api-${item.model}.json
    assert out == metrics / "eval" / "api-meta-llama" / "Llama-3.1-8B-Instruct.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"variant": variant.name, "skipped": "LLAMA_KEY is not set"}))
    references = build_summary(metrics, list(VARIANTS), "free")["references"]
    assert {"variant": variant.name, "skipped": "LLAMA_KEY is not set"} in references
