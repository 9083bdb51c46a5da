"""Stage `report`: one table and three Pareto frontiers to choose a variant for this hardware.

Reads metrics/eval/V.json, metrics/handwritten/V.json, metrics/bench/V.json and metrics/variants/V.json
of every variant (merged, gptq, F16 and each of gguf.levels) and writes
    metrics/summary.json        every number, per variant, with the hardware they were measured on
    reports/summary.md          the same as Markdown tables, overall and per language (pasted into the README)
    reports/product_confusions.png  the merged model's most frequent product confusions, both test sets
    metrics/pareto/AXIS.json    plot data for `dvc plots` (template .dvc/plots/pareto.json)
    reports/pareto_AXIS.png     the frontiers as images, drawn from that same template
    reports/report.html         an interactive page (plotly, with plotly.js inlined: works offline)
A variant without its eval or bench metrics is an error, and so are bench files from different machines.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_write_bytes, atomic_write_text, write_json
from ecommerce_slm.gguf_file import GgufConfig
from ecommerce_slm.machine import same_machine
from ecommerce_slm.params import Section, check
from ecommerce_slm.pareto import Point, frontier
from ecommerce_slm.paths import EVAL_FILE, METRICS, PARETO_TEMPLATE_DIR, REPORTS
from ecommerce_slm.task import DECODING_MODES
from ecommerce_slm.variants import MEASURED_VARIANTS, REFERENCE_VARIANTS


@dataclass
class ReportConfig(Section):
    """`report:` the table and the Pareto frontiers (accuracy against memory, speed and size)."""

    SECTION: ClassVar[str] = "report"
    decoding: str = "free"  # whose exact match the frontiers plot: free | json_schema

    def __post_init__(self):
        check(self.decoding in DECODING_MODES, "decoding", f"one of {list(DECODING_MODES)}", self.decoding)


CAVEAT = (
    "The embedded base (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF and is dequantized here: its weights sit "
    "on a 4-bit grid, so the quantization drift measured on it understates what a bf16-trained model shows."
)


@dataclass(frozen=True)
class Axis:
    name: str  # field in the plot data and summary rows
    label: str
    higher_is_better: bool


AXES = (
    Axis("peak_rss_mib", "peak RSS (MiB), lower is better", False),
    Axis("generation_tokens_per_s", "generation tokens/s, higher is better", True),
    Axis("file_mib", "model size on disk (MiB), lower is better", False),
)


class ReportError(ProjectError, RuntimeError):
    pass


def read_json(path: Path, needed_by: str) -> dict:
    if not path.exists():
        raise ReportError(f"{path}: missing for variant {needed_by}; run `dvc repro` (or the stage that writes it)")
    return json.loads(path.read_text())


def variant_row(name: str, metrics_dir: Path, decoding: str, parameters: int | None) -> tuple[dict, dict]:
    """One table row from the eval, bench and variant-file metrics of `name`, and the bench's hardware."""
    ev = read_json(metrics_dir / "eval" / f"{name}.json", name)
    handwritten = read_json(metrics_dir / "handwritten" / f"{name}.json", name)
    bench = read_json(metrics_dir / "bench" / f"{name}.json", name)
    if "skipped" in ev:
        raise ReportError(f"{metrics_dir}/eval/{name}.json: eval was skipped ({ev['skipped']})")
    if Path(ev.get("data", "")) != EVAL_FILE:
        raise ReportError(
            f"{metrics_dir}/eval/{name}.json: measured on {ev.get('data')!r}, not the pipeline's "
            f"{EVAL_FILE}; rerun `dvc repro -f -s eval@{name}` (or eval_gguf@{name})"
        )
    if decoding not in ev:
        raise ReportError(
            f"{metrics_dir}/eval/{name}.json: no '{decoding}' results (report.decoding); it has "
            f"{[m for m in DECODING_MODES if m in ev]}"
        )
    info_file = metrics_dir / "variants" / f"{name}.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    file_bytes = bench["file_mib"] * 2**20
    bpw = info.get("bits_per_weight") or (round(file_bytes * 8 / parameters, 3) if parameters else None)
    energy = bench["energy"]["joules_per_generated_token"]
    return {
        "variant": name,
        "engine": bench["engine"],
        "device": bench["device"],
        "exact_match": ev[decoding]["exact_match"],
        "exact_match_free": ev.get("free", {}).get("exact_match"),
        "exact_match_json_schema": ev.get("json_schema", {}).get("exact_match"),
        "json_valid_free": ev.get("free", {}).get("json_valid"),
        "handwritten_exact_free": handwritten.get("free", {}).get("exact_match"),
        "handwritten_exact_json_schema": handwritten.get("json_schema", {}).get("exact_match"),
        "by_language": language_scores(metrics_dir, name),
        "kl_from_merged": ev.get("kl_from_merged"),
        "file_mib": bench["file_mib"],
        "bits_per_weight": bpw,
        "generation_tokens_per_s": bench["generation_tokens_per_s"]["median"],
        "generation_tokens_per_s_range": [
            bench["generation_tokens_per_s"]["min"],
            bench["generation_tokens_per_s"]["max"],
        ],
        "generation_tokens_per_s_llama_cpp": bench.get("llama_cpp_timings", {})
        .get("generation_tokens_per_s", {})
        .get("median"),
        "fraction_of_bandwidth_bound": bench["fraction_of_bound"],
        "prompt_tokens_per_s": bench["prompt_tokens_per_s"]["median"],
        "peak_rss_mib": bench["peak_rss_mib"]["median"],
        "peak_vram_mib": bench.get("peak_vram_mib", {}).get("median"),
        "load_seconds": bench["load_seconds"]["median"],
        "joules_per_token": energy["median"] if energy else None,
        "energy_note": bench["energy"].get("reason") or bench["energy"].get("note"),
        "eval_rows": ev["n"],
        "eval_engine": ev.get("engine"),
        "eval_seconds": {mode: ev[mode].get("seconds") for mode in DECODING_MODES if mode in ev},
        # rows whose free answer the schema pass kept instead of decoding them again (evaluation.decode)
        "eval_free_answers_kept": ev.get("json_schema", {}).get("free_answers_kept"),
        "llama_bench": bench.get("llama_bench"),  # llama.cpp's llama-bench on the same file (GGUF only)
        "llama_perplexity": ev.get("llama_perplexity"),  # llama-perplexity's KL from F16 (GGUF levels)
        "bench_repeats": bench["repeats"],
        "threads": bench["threads"],
    }, bench["hardware"]


def language_scores(metrics_dir: Path, name: str) -> dict:
    """Free-decoding exact match per language on each test set, from the eval details."""
    out = {}
    for test_set in ("eval", "handwritten"):
        details_file = metrics_dir / test_set / f"{name}.details.json"
        details = json.loads(details_file.read_text()) if details_file.exists() else {}
        out[test_set] = details.get("free", {}).get("by_language", {})
    return out


def top_confusions(metrics_dir: Path, name: str = "merged", decoding: str = "free") -> list[dict]:
    """The most frequent product confusions of one variant on both test sets (from its details)."""
    rows = []
    for test_set in ("eval", "handwritten"):
        details_file = metrics_dir / test_set / f"{name}.details.json"
        if details_file.exists():
            details = json.loads(details_file.read_text())
            confusion = details.get(decoding, {}).get("diagnostics", {}).get("confusion", {}).get("product", {})
            rows += [
                {"pair": f"{c['expected']} -> {c['predicted']}", "count": c["count"], "set": test_set}
                for c in confusion.get("top", [])
            ]
    return rows


def confusion_spec(rows: list[dict], name: str) -> dict:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": f"{name}: most frequent product confusions (expected -> predicted, free decoding)",
        "data": {"values": rows},
        "mark": "bar",
        "encoding": {
            "y": {"field": "pair", "type": "nominal", "sort": "-x", "title": None},
            "x": {"field": "count", "type": "quantitative", "title": "requests"},
            "color": {"field": "set", "type": "nominal", "title": "test set"},
        },
        "width": 420,
    }


def api_metrics(eval_dir: Path) -> list[Path]:
    """metrics/eval/api-MODEL.json, where MODEL may hold '/' (then the file sits in a subfolder)."""
    if not eval_dir.is_dir():
        return []
    return sorted(
        p
        for p in eval_dir.rglob("*.json")
        if p.relative_to(eval_dir).as_posix().startswith("api-") and not p.name.endswith(".details.json")
    )


def reference_rows(metrics_dir: Path, decoding: str) -> list[dict]:
    """Accuracy-only rows: the untuned base and any API baseline, skipped ones with their reason."""
    files = [metrics_dir / "eval" / f"{n}.json" for n in REFERENCE_VARIANTS] + sorted(api_metrics(metrics_dir / "eval"))
    rows = []
    for f in files:
        if not f.exists() or f.name.endswith(".details.json"):
            continue
        ev = json.loads(f.read_text())
        handwritten_file = metrics_dir / "handwritten" / f.relative_to(metrics_dir / "eval")
        handwritten = json.loads(handwritten_file.read_text()) if handwritten_file.exists() else {}
        if "skipped" in ev:
            rows.append({"variant": ev["variant"], "skipped": ev["skipped"]})
        else:
            rows.append(
                {
                    "variant": ev["variant"],
                    "exact_match": ev[decoding]["exact_match"],
                    "exact_match_free": ev.get("free", {}).get("exact_match"),
                    "exact_match_json_schema": ev.get("json_schema", {}).get("exact_match"),
                    "json_valid_free": ev.get("free", {}).get("json_valid"),
                    "handwritten_exact_free": handwritten.get("free", {}).get("exact_match"),
                    "handwritten_exact_json_schema": handwritten.get("json_schema", {}).get("exact_match"),
                    "kl_from_merged": ev.get("kl_from_merged"),
                }
            )
    return rows


def check_one_data(names: list[str], metrics_dir: Path) -> None:
    """Every variant's eval must have read the same eval file contents (a file edited between evals is two data sets)."""
    hashes = {n: json.loads((metrics_dir / "eval" / f"{n}.json").read_text()).get("data_sha256") for n in names}
    if len(set(hashes.values())) > 1:
        groups = {h: [n for n in names if hashes[n] == h] for h in set(hashes.values())}
        raise ReportError(
            f"{metrics_dir}/eval/: variants were evaluated on different versions of {EVAL_FILE} "
            f"({'; '.join(', '.join(g) for g in groups.values())}); rerun their eval stages"
        )


def check_one_machine(names: list[str], hardware: list[dict], metrics_dir: Path) -> dict:
    for name, other in zip(names[1:], hardware[1:], strict=True):
        if not same_machine(hardware[0], other):
            raise ReportError(
                f"{metrics_dir}/bench/{names[0]}.json and {name}.json were measured on different "
                "machines or library versions; rerun the bench stages on one machine"
            )
    return hardware[0]


def pareto_data(rows: list[dict], axis: Axis) -> list[dict]:
    """Plot rows for one frontier: variant, the axis value, accuracy, and frontier | dominated."""
    on = set(frontier([Point(r["variant"], r[axis.name], r["exact_match"]) for r in rows], axis.higher_is_better))
    return [
        {
            "variant": r["variant"],
            axis.name: r[axis.name],
            "exact_match": r["exact_match"],
            "pareto": "frontier" if r["variant"] in on else "dominated",
        }
        for r in rows
    ]


def vega_spec(data: list[dict], axis: Axis, decoding: str, template_dir: Path) -> dict:
    """The spec `dvc plots show` draws for this frontier, filled by DVC's own renderer (so the PNGs match it)."""
    from dvc_render import VegaRenderer

    rows = [dict(d, rev="workspace") for d in data]
    return VegaRenderer(
        rows,
        axis.name,
        template="pareto",
        template_dir=str(template_dir),
        x=axis.name,
        y="exact_match",
        title=f"Accuracy vs {axis.label.split(',')[0]}",
        x_label=axis.label,
        y_label=f"exact match ({decoding})",
    ).get_filled_template()


def fmt(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def kl_text(kl: float | None) -> str:
    return "-" if kl is None else f"{kl:.2g}"  # significant digits: KL spans 1e-6 to 1


def instruction_sets(flags: list[str]) -> str:
    """The CPU features that decide this project's kernels and step budgets, for the report's first line: "AMD EPYC"
    names an AVX2-only Zen 2 and an AVX512_BF16 Zen 4 alike, whose training steps differ 2x."""
    named = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX"}
    found = [label for flag, label in named.items() if flag in flags]
    return ", ".join(found or ["no AVX2"]) + ("" if "amx_bf16" in flags else ", no AMX")


def markdown(summary: dict) -> str:
    hw = summary["hardware"]
    lines = [
        f"Measured on {hw['cpu']['model']} ({instruction_sets(hw['cpu']['flags'])}; {hw['usable_cpus']} CPUs, "
        f"{summary['threads']} threads used, "
        f"{hw['ram_gib']} GiB RAM, GPU: {hw['gpu']['name'] if hw['gpu'] else 'none'}; copy bandwidth "
        f"{hw['memory_bandwidth']['best_gb_per_s']} GB/s), torch {hw['versions']['torch']}, llama-cpp-python "
        f"{hw['versions']['llama_cpp_python']}. Exact match on {summary['eval_rows']} eval requests; speed: median of "
        f"{summary['bench_repeats']} fresh processes. Pareto frontiers on `{summary['decoding']}` exact match.",
        "",
        "| variant | exact (free) | exact (schema) | handwritten (free) | handwritten (schema) | JSON valid | "
        "KL from merged | size MiB | bits/weight | gen tok/s "
        "(range) | llama.cpp's own tok/s | % of bandwidth bound | prompt tok/s | peak RSS MiB | load s | J/token | "
        "frontier (RAM / speed / size) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["variants"]:
        lo, hi = r["generation_tokens_per_s_range"]
        marks = "/".join("F" if r["variant"] in summary["frontiers"][a.name] else "-" for a in AXES)
        kl = r["kl_from_merged"]
        lines.append(
            f"| {r['variant']} | {fmt(r['exact_match_free'])} | {fmt(r['exact_match_json_schema'])} | "
            f"{fmt(r['handwritten_exact_free'])} | {fmt(r['handwritten_exact_json_schema'])} | "
            f"{fmt(r['json_valid_free'], 2)} | {kl_text(kl)} | {fmt(r['file_mib'], 1)} | "
            f"{fmt(r['bits_per_weight'], 2)} | {fmt(r['generation_tokens_per_s'], 1)} ({lo:.0f}-{hi:.0f}) | "
            f"{fmt(r['generation_tokens_per_s_llama_cpp'], 1)} | {fmt(100 * r['fraction_of_bandwidth_bound'], 0, '%')} | "
            f"{fmt(r['prompt_tokens_per_s'], 0)} | {fmt(r['peak_rss_mib'], 0)} | {fmt(r['load_seconds'], 2)} | "
            f"{fmt(r['joules_per_token'], 4)} | {marks} |"
        )
    for r in summary["references"]:
        if "skipped" in r:
            lines.append(f"| {r['variant']} (reference) | skipped: {r['skipped']} |" + " |" * 15)
        else:
            lines.append(
                f"| {r['variant']} (reference, few-shot) | {fmt(r['exact_match_free'])} | "
                f"{fmt(r['exact_match_json_schema'])} | {fmt(r.get('handwritten_exact_free'))} | "
                f"{fmt(r.get('handwritten_exact_json_schema'))} | {fmt(r['json_valid_free'], 2)} | "
                f"{kl_text(r['kl_from_merged'])} |" + " |" * 10
            )
    energy_notes = sorted(
        {r["energy_note"] for r in summary["variants"] if r["joules_per_token"] is None and r["energy_note"]}
    )
    lines += [
        "",
        "F: on that Pareto frontier (no other variant is at least as accurate and at least as cheap on that axis).",
        "Energy: " + ("; ".join(energy_notes) if energy_notes else "measured (see metrics/summary.json)") + ".",
        "",
        CAVEAT,
        "",
    ]
    return "\n".join(lines + language_table(summary) + llama_cpp_table(summary))


def llama_cpp_table(summary: dict) -> list[str]:
    """Each GGUF's numbers beside llama.cpp's own tools' on the same file, and how long its eval took."""
    lines = [
        "Cross-checks with llama.cpp's own programs: tokens/s from llama-bench (same prompt length and new "
        "tokens) beside the bench's, KL from F16 by llama-perplexity beside the KL from merged; eval seconds "
        "for the eval set (free / schema; the schema pass decodes only the rows whose free answer its grammar "
        "would change, and keeps the rest: greedy decoding under the grammar gives the same tokens) and the "
        "engine that decoded it.",
        "",
        "| variant | gen tok/s: bench / llama-bench (ratio) | prompt tok/s: bench / llama-bench (ratio) | "
        "KL from merged | llama-perplexity KL from F16 | same top token | eval s: free / schema (free answers kept) | "
        "eval engine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["variants"]:
        own, ppl = r.get("llama_bench"), r.get("llama_perplexity") or {}
        if own is None and r.get("eval_engine") not in ("llama_server", "llama_cpp"):
            continue
        gen = prompt = "-"
        if own:
            ratio = own["ours_over_llama_bench"]
            gen = f"{fmt(r['generation_tokens_per_s'], 1)} / {fmt(own['generation_tokens_per_s'], 1)} ({ratio['generation']:.2f})"
            prompt = (
                f"{fmt(r['prompt_tokens_per_s'], 0)} / {fmt(own['prompt_tokens_per_s'], 0)} ({ratio['prompt']:.2f})"
            )
        seconds = " / ".join(fmt(v, 1) for v in r.get("eval_seconds", {}).values()) or "-"
        if r.get("eval_free_answers_kept") is not None:
            seconds += f" ({r['eval_free_answers_kept']} of {r['eval_rows']})"
        lines.append(
            f"| {r['variant']} | {gen} | {prompt} | {kl_text(r['kl_from_merged'])} | "
            f"{kl_text(ppl.get('mean_kl'))} | {fmt(ppl.get('same_top_token'), 3)} | {seconds} | "
            f"{r.get('eval_engine') or '-'} |"
        )
    return lines + [""]


def language_table(summary: dict) -> list[str]:
    """Exact match (free decoding) per language, on the generated eval set and on the handwritten set."""
    languages = sorted({lang for r in summary["variants"] for lang in r["by_language"]["eval"]})
    lines = [
        "Per language, exact match (free decoding): generated eval set / handwritten set.",
        "",
        "| variant | " + " | ".join(languages) + " |",
        "|---|" + "---|" * len(languages),
    ]
    for r in summary["variants"]:
        cells = [
            f"{fmt(r['by_language']['eval'].get(lang))} / {fmt(r['by_language']['handwritten'].get(lang))}"
            for lang in languages
        ]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return lines + [""]


def plotly_page(summary: dict, table_md: str) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = summary["variants"]
    fig = make_subplots(rows=1, cols=len(AXES), subplot_titles=[a.label for a in AXES], horizontal_spacing=0.07)
    for i, axis in enumerate(AXES, 1):
        data = pareto_data(rows, axis)
        front = sorted((d for d in data if d["pareto"] == "frontier"), key=lambda d: d[axis.name])
        fig.add_trace(
            go.Scatter(
                x=[d[axis.name] for d in front],
                y=[d["exact_match"] for d in front],
                mode="lines",
                line={"dash": "dash", "color": "#4c78a8"},
                name="frontier",
                showlegend=i == 1,
            ),
            row=1,
            col=i,
        )
        for kind, symbol, opacity in (("frontier", "circle", 1.0), ("dominated", "x", 0.5)):
            pts = [d for d in data if d["pareto"] == kind]
            fig.add_trace(
                go.Scatter(
                    x=[d[axis.name] for d in pts],
                    y=[d["exact_match"] for d in pts],
                    mode="markers+text",
                    text=[d["variant"] for d in pts],
                    textposition="top right",
                    opacity=opacity,
                    marker={"symbol": symbol, "size": 11, "color": "#4c78a8" if kind == "frontier" else "#e45756"},
                    name=kind,
                    showlegend=i == 1,
                ),
                row=1,
                col=i,
            )
        fig.update_xaxes(title_text=axis.label, row=1, col=i)
    fig.update_yaxes(title_text=f"exact match ({summary['decoding']})", row=1, col=1)
    fig.update_layout(height=480, width=1500, title="Accuracy against memory, speed and size")
    table = "<pre>" + html.escape(table_md) + "</pre>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ecommerce-slm report</title></head><body>"
        "<h1>ecommerce-slm: which variant for this machine</h1>"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + table
        + "</body></html>"
    )


def build_summary(metrics_dir: Path, variants: list[str], decoding: str) -> dict:
    f16 = metrics_dir / "variants" / "F16.json"
    parameters = json.loads(f16.read_text()).get("parameters") if f16.exists() else None
    rows, machines = zip(*(variant_row(v, metrics_dir, decoding, parameters) for v in variants), strict=True)
    check_one_data(variants, metrics_dir)
    rows = list(rows)
    hardware = check_one_machine(variants, list(machines), metrics_dir)
    return {
        "decoding": decoding,
        "hardware": hardware,
        "threads": rows[0]["threads"],
        "eval_rows": rows[0]["eval_rows"],
        "bench_repeats": rows[0]["bench_repeats"],
        "variants": rows,
        "references": reference_rows(metrics_dir, decoding),
        "frontiers": {
            a.name: frontier([Point(r["variant"], r[a.name], r["exact_match"]) for r in rows], a.higher_is_better)
            for a in AXES
        },
        "product_confusions": top_confusions(metrics_dir),
        "caveat": CAVEAT,
    }


def write_report(summary: dict, metrics_dir: Path, reports_dir: Path, template_dir: Path = PARETO_TEMPLATE_DIR) -> None:
    import vl_convert

    table = markdown(summary)
    for axis in AXES:
        data = pareto_data(summary["variants"], axis)
        write_json(metrics_dir / "pareto" / f"{axis.name}.json", data)
        spec = vega_spec(data, axis, summary["decoding"], template_dir)
        atomic_write_bytes(reports_dir / f"pareto_{axis.name}.png", vl_convert.vegalite_to_png(spec, scale=2))
    spec = confusion_spec(summary["product_confusions"], "merged")  # empty when merged confuses no product
    atomic_write_bytes(reports_dir / "product_confusions.png", vl_convert.vegalite_to_png(spec, scale=2))
    atomic_write_text(reports_dir / "summary.md", table)
    atomic_write_text(reports_dir / "report.html", plotly_page(summary, table))
    write_json(metrics_dir / "summary.json", summary)  # last: its presence means the rest is complete


@stage_main("report")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    cfg = ReportConfig.load()
    variants = [*MEASURED_VARIANTS, *GgufConfig.load().levels]
    summary = build_summary(METRICS, variants, cfg.decoding)
    write_report(summary, METRICS, REPORTS)
    print(markdown(summary))
    return (
        "frontiers "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in summary["frontiers"].items())
        + f" -> {METRICS / 'summary.json'}, {REPORTS}/"
    )


if __name__ == "__main__":
    sys.exit(main())
