"""Benchmarking one variant: load time, prompt and generation speed, memory and energy.

Run by the stages `bench@VARIANT` (merged, gptq, F16) and `bench_gguf@LEVEL`. Every repeat runs in a
fresh process (spawned), so load time and peak RSS are that variant's own and a GGUF process never
even imports torch. In each: load the model (timed), `warmup` untimed requests, then for each of the
first `bench.prompts` eval requests a prefill (prompt tokens/s) and exactly `bench.new_tokens` greedy
tokens with end-of-sequence ignored (generation tokens/s over the new_tokens - 1 single-token steps;
the first token comes out of the prefill). Both engines get the same token ids. Reported: median, min,
max over repeats. For GGUF, llama.cpp's own counters (llama_perf_context) are reported beside ours.
Decode speed is also given as a fraction of the memory-bandwidth bound (bandwidth / bytes of weights
read per token, from metrics/hardware.json).
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import ClassVar

from ecommerce_slm.cli import ProjectError
from ecommerce_slm.files import read_jsonl, write_json
from ecommerce_slm.gptq import configure_gptqmodel
from ecommerce_slm.llama_tools import llama_bench, load_binding
from ecommerce_slm.machine import NvmlEnergyReader, RaplReader, fingerprint, same_machine
from ecommerce_slm.params import Section, check, is_pos_int
from ecommerce_slm.paths import BENCH_DIR, EVAL_FILE, HARDWARE_FILE, MERGED_DIR
from ecommerce_slm.task import prompt_messages
from ecommerce_slm.variants import Variant

MIB = 2**20


@dataclass
class BenchConfig(Section):
    """`bench:` speed, memory and energy of each variant, measured the same way for every engine.

    Each repeat is a fresh process: load the model (timed), `warmup` untimed requests, then every prompt
    is prefilled (prompt tokens/s) and extended by exactly `new_tokens` greedy tokens (generation
    tokens/s; end-of-sequence ignored so every variant does the same work). Median and spread over repeats.
    Read by the bench, bench_gguf and hardware stages.
    """

    SECTION: ClassVar[str] = "bench"
    repeats: int = 5
    warmup: int = 1
    prompts: int = 4  # the first N eval requests, in the chat format the model was trained on
    new_tokens: int = 32
    threads: int = 2
    device: str = "auto"  # transformers variants: auto (cuda when present) | cpu | cuda; GGUF runs on the CPU build

    def __post_init__(self):
        for name in ("repeats", "prompts", "new_tokens", "threads"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        check(isinstance(self.warmup, int) and self.warmup >= 0, "warmup", "an integer >= 0", self.warmup)
        check(
            self.new_tokens >= 2, "new_tokens", "at least 2 (the first token comes from the prefill)", self.new_tokens
        )
        check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)


class BenchError(ProjectError, RuntimeError):
    pass


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM), in MiB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec, so a spawned child
    would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"/proc/self/status has no {field}")


def weight_bytes(location: str) -> int:
    """Bytes of weights a decode step reads: the GGUF file, or a folder's safetensors files."""
    path = Path(location)
    if path.is_file():
        return path.stat().st_size
    files = list(path.glob("*.safetensors"))
    if not files:
        raise BenchError(f"{path}: no .gguf file or *.safetensors weights")
    return sum(f.stat().st_size for f in files)


def prompt_ids(tokenizer_dir: Path, rows: list[dict], n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [
        tokenizer.apply_chat_template(
            prompt_messages(r["text"]), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for r in rows[:n]
    ]


def spread(values: list[float], digits: int = 2) -> dict:
    """Median and range; `relative_spread` = (max - min) / median, to see at a glance how steady it was."""
    median = statistics.median(values)
    return {
        "median": round(median, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "relative_spread": round((max(values) - min(values)) / median, 3) if median else None,
    }


# ---- one repeat, in its own process -----------------------------------------------------------------------


class EnergyMeter:
    """Joules spent during the timed decode steps, from NVML on CUDA or RAPL on the CPU; else a reason."""

    def __init__(self, on_gpu: bool):
        self.reader = NvmlEnergyReader() if on_gpu else RaplReader()
        self.source = "nvml" if on_gpu else "rapl"
        self.joules = 0.0

    def start(self):
        self._before = self.reader.read() if self.reader.available else None

    def stop(self):
        if self.reader.available:
            self.joules += self.reader.joules_between(self._before, self.reader.read())


def timed_requests(
    prompts: list[list[int]], start_request, cfg: BenchConfig, meter: EnergyMeter, after_warmup=lambda: None
) -> list[tuple[float, float]]:
    """(prefill seconds, decode seconds) per prompt, after `cfg.warmup` untimed requests (then after_warmup()).

    start_request(ids) returns (prefill, step, finish): prefill() processes the prompt and picks the first
    token, step() adds one greedy token, finish() waits for the device. Energy counts the decode steps only.
    """

    def run(ids: list[int], timed_meter: EnergyMeter | None) -> tuple[float, float]:
        prefill, step, finish = start_request(ids)
        t0 = time.perf_counter()
        prefill()
        finish()
        t1 = time.perf_counter()
        if timed_meter:
            timed_meter.start()
        for _ in range(cfg.new_tokens - 1):  # greedy, end-of-sequence ignored: the same work for every variant
            step()
        finish()
        t2 = time.perf_counter()
        if timed_meter:
            timed_meter.stop()
        return t1 - t0, t2 - t1

    for i in range(cfg.warmup):
        run(prompts[i % len(prompts)], None)
    after_warmup()
    return [run(ids, meter) for ids in prompts]


def _llama_cpp_repeat(location: str, prompts: list[list[int]], cfg: BenchConfig) -> dict:
    import llama_cpp

    rss_start = rss_mib()
    start = time.perf_counter()
    llm = load_binding(location, cfg.threads)
    load_seconds = time.perf_counter() - start
    rss_loaded = rss_mib()

    def start_request(ids: list[int]):
        llm.reset()  # no prefix reuse between prompts: every prefill is a full one
        tokens = llm.generate(ids, top_k=1, temp=0.0, reset=False)  # each next(): eval the last token, pick one
        return (lambda: next(tokens)), (lambda: next(tokens)), (lambda: None)

    meter = EnergyMeter(on_gpu=False)
    # llama.cpp's counters restart after the warm-up, so they count exactly what we time
    timings = timed_requests(prompts, start_request, cfg, meter, lambda: llama_cpp.llama_perf_context_reset(llm.ctx))
    perf = llama_cpp.llama_perf_context(llm.ctx)
    result = _result(prompts, timings, cfg, load_seconds, rss_start, rss_loaded, meter)
    result["llama_cpp"] = {  # llama.cpp's own accounting of the same timed runs
        "prompt_tokens": perf.n_p_eval,
        "prompt_seconds": perf.t_p_eval_ms / 1e3,
        "decode_tokens": perf.n_eval,
        "decode_seconds": perf.t_eval_ms / 1e3,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }
    return result


def _transformers_repeat(location: str, prompts: list[list[int]], cfg: BenchConfig) -> dict:
    configure_gptqmodel(cfg.threads)
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(cfg.threads)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("bench.device: cuda, but torch sees no CUDA device")
    finish = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss_start = rss_mib()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(location, device_map=device).eval()
    finish()
    load_seconds = time.perf_counter() - start
    rss_loaded = rss_mib()

    def start_request(ids: list[int]):
        state = {}

        def forward(inputs, past=None):
            state["out"] = model(inputs, past_key_values=past, use_cache=True)
            state["token"] = state["out"].logits[:, -1:].argmax(-1)

        prefill = lambda: forward(torch.tensor([ids], device=device))  # noqa: E731
        step = lambda: forward(state["token"], state["out"].past_key_values)  # noqa: E731
        return prefill, step, finish

    meter = EnergyMeter(on_gpu=device == "cuda")
    with torch.inference_mode():
        timings = timed_requests(prompts, start_request, cfg, meter)
    result = _result(prompts, timings, cfg, load_seconds, rss_start, rss_loaded, meter)
    result["device"] = device
    if device == "cuda":
        result["peak_vram_mib"] = torch.cuda.max_memory_allocated() / MIB
        result["gpu"] = torch.cuda.get_device_name()
    return result


def _result(prompts, timings, cfg, load_seconds, rss_start, rss_loaded, meter: EnergyMeter) -> dict:
    decode_tokens = len(prompts) * (cfg.new_tokens - 1)
    return {
        "load_seconds": load_seconds,
        "prompt_tokens": sum(len(p) for p in prompts),
        "prompt_seconds": sum(t[0] for t in timings),
        "decode_tokens": decode_tokens,
        "decode_seconds": sum(t[1] for t in timings),
        "rss_before_load_mib": rss_start,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_mib": rss_mib("VmHWM"),
        "energy_joules": meter.joules if meter.reader.available else None,
        "energy_source": meter.source,
        "energy_reason": meter.reader.reason,
    }


def one_repeat(engine: str, location: str, prompts: list[list[int]], cfg: BenchConfig) -> dict:
    if engine == "llama_cpp":
        return _llama_cpp_repeat(location, prompts, cfg)
    return _transformers_repeat(location, prompts, cfg)


def in_fresh_process(engine: str, location: str, prompts: list[list[int]], cfg: BenchConfig) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(one_repeat, engine, location, prompts, cfg).result()


# ---- the summary ------------------------------------------------------------------------------------------


def summarize_repeats(variant: Variant, runs: list[dict], cfg: BenchConfig, weights: int, hardware: dict) -> dict:
    """Median and spread over repeats, and decode speed against the bandwidth bound."""
    prompt_tps = [r["prompt_tokens"] / r["prompt_seconds"] for r in runs]
    decode_tps = [r["decode_tokens"] / r["decode_seconds"] for r in runs]
    bandwidth = hardware["memory_bandwidth"]["best_gb_per_s"] * 1e9
    bound = bandwidth / weights
    out = {
        "variant": variant.name,
        "engine": variant.engine,
        "location": variant.location,
        "device": runs[0].get("device", "cpu"),
        "threads": cfg.threads,
        "repeats": len(runs),
        "warmup": cfg.warmup,
        "prompts": cfg.prompts,
        "prompt_tokens": runs[0]["prompt_tokens"],
        "new_tokens_per_prompt": cfg.new_tokens,
        "file_mib": round(weights / MIB, 1),
        "load_seconds": spread([r["load_seconds"] for r in runs], 3),
        "prompt_tokens_per_s": spread(prompt_tps, 1),
        "generation_tokens_per_s": spread(decode_tps, 1),
        "peak_rss_mib": spread([r["peak_rss_mib"] for r in runs], 1),
        "rss_before_load_mib": spread([r["rss_before_load_mib"] for r in runs], 1),
        "bandwidth_bound_tokens_per_s": round(bound, 1),
        "fraction_of_bound": round(statistics.median(decode_tps) / bound, 3),
        "bound_note": f"bound = copy bandwidth {hardware['memory_bandwidth']['best_gb_per_s']} GB/s / {weights} weight "
        "bytes per token (every weight read once per token; KV cache and activations not counted)",
    }
    if "peak_vram_mib" in runs[0]:
        out["peak_vram_mib"] = spread([r["peak_vram_mib"] for r in runs], 1)
        out["gpu"] = runs[0]["gpu"]
    joules = [r["energy_joules"] for r in runs]
    if all(j is not None for j in joules):
        out["energy"] = {
            "source": runs[0]["energy_source"],
            "joules_per_generated_token": spread(
                [j / r["decode_tokens"] for j, r in zip(joules, runs, strict=True)], 4
            ),
            "note": "whole CPU package (RAPL) or whole GPU (NVML) during the timed decode steps",
        }
    else:
        out["energy"] = {
            "source": runs[0]["energy_source"],
            "joules_per_generated_token": None,
            "reason": next(r["energy_reason"] for r in runs if r["energy_joules"] is None),
        }
    if "llama_cpp" in runs[0]:
        own = [r["llama_cpp"]["decode_tokens"] / r["llama_cpp"]["decode_seconds"] for r in runs]
        own_prompt = [r["llama_cpp"]["prompt_tokens"] / r["llama_cpp"]["prompt_seconds"] for r in runs]
        out["llama_cpp_timings"] = {
            "generation_tokens_per_s": spread(own, 1),
            "prompt_tokens_per_s": spread(own_prompt, 1),
            "decode_tokens": runs[0]["llama_cpp"]["decode_tokens"],
            "prompt_tokens": runs[0]["llama_cpp"]["prompt_tokens"],
            "ours_over_llama_cpp": round(statistics.median(decode_tps) / statistics.median(own), 3),
            "system_info": runs[0]["llama_cpp"]["system_info"],
        }
    out["hardware"] = hardware
    return out


def load_hardware(path: Path = HARDWARE_FILE) -> dict:
    if not path.exists():
        raise BenchError(f"{path}: missing; run `dvc repro hardware` (or python -m stages.hardware) first")
    recorded = json.loads(path.read_text())
    if not same_machine(recorded, fingerprint()):
        raise BenchError(
            f"{path} describes another machine or other library versions; rerun `python -m stages.hardware`"
        )
    return recorded


def bench(variant: Variant, cfg: BenchConfig, out: Path | None = None) -> str:
    """Bench one variant in `cfg.repeats` fresh processes, write its JSON; return the one-line summary."""
    if variant.engine == "api":
        raise BenchError(f"{variant.name}: an API model runs on someone else's hardware; nothing to bench here")
    rows = read_jsonl(EVAL_FILE)
    if len(rows) < cfg.prompts:
        raise BenchError(f"params.yaml: bench.prompts: {cfg.prompts} requested but {EVAL_FILE} has {len(rows)} rows")
    hardware = load_hardware()
    weights = weight_bytes(variant.location)
    tokenizer_dir = Path(variant.location) if variant.engine == "transformers" else MERGED_DIR
    prompts = prompt_ids(tokenizer_dir, rows, cfg.prompts)
    runs = []
    for i in range(cfg.repeats):
        runs.append(in_fresh_process(variant.engine, variant.location, prompts, cfg))
        print(
            f"bench: {variant.name} repeat {i + 1}/{cfg.repeats}: load {runs[-1]['load_seconds']:.2f} s, "
            f"generation {runs[-1]['decode_tokens'] / runs[-1]['decode_seconds']:.1f} tok/s",
            flush=True,
        )
    result = summarize_repeats(variant, runs, cfg, weights, hardware)
    if variant.engine == "llama_cpp":  # llama.cpp's own measurement of the same file, as a cross-check
        mean_prompt = round(statistics.mean(map(len, prompts)))
        own = llama_bench(variant.location, mean_prompt, cfg.new_tokens, cfg.threads, cfg.repeats)
        own["ours_over_llama_bench"] = {
            "generation": round(result["generation_tokens_per_s"]["median"] / own["generation_tokens_per_s"], 3),
            "prompt": round(result["prompt_tokens_per_s"]["median"] / own["prompt_tokens_per_s"], 3),
        }
        result["llama_bench"] = own
    out = out or BENCH_DIR / f"{variant.file_stem}.json"
    write_json(out, result)
    g = result["generation_tokens_per_s"]
    return (
        f"{variant.name}: generation {g['median']} tok/s (range {g['min']}-{g['max']}, "
        f"{result['fraction_of_bound']:.0%} of the bandwidth bound), prompt {result['prompt_tokens_per_s']['median']} "
        f"tok/s, peak RSS {result['peak_rss_mib']['median']} MiB, load {result['load_seconds']['median']} s -> {out}"
    )
