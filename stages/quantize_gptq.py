"""Stage `quantize_gptq`: models/merged/ -> models/gptq/ (GPTQ v1 format, loadable by transformers).

    python -m stages.quantize_gptq       # reads params.yaml: gptq

gptqmodel (the maintained successor of auto-gptq) calibrates on `gptq.calibration_samples` training
requests, rendered with the chat template as prompt + answer, as in the paper. Before saving, the
checkpoint is reloaded the way every user loads it (transformers `from_pretrained`, no
quantization_config) and must give the same greedy answers as the model right after quantization.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import atomic_dir, atomic_write_text, read_jsonl, write_json
from ecommerce_slm.gptq import GptqError, configure_gptqmodel, load_gptq
from ecommerce_slm.machine import native_bf16
from ecommerce_slm.params import ParamError, Section, check, is_pos_int
from ecommerce_slm.paths import GPTQ_DIR, MERGED_DIR, TRAIN_FILE, VARIANT_INFO_DIR, variant_info
from ecommerce_slm.task import completion_messages, intent_of, prompt_messages

DTYPES = ("float32", "bfloat16", "float16")
CHECK_TEXTS = [
    "Can you delet 12 lip balms for me?",
    "Bok, ubaci dvije paste za zube u košaricu pls",
    "¿me quitas tres cremas de manos?",
]


@dataclass
class GptqConfig(Section):
    """`gptq:` 4-bit GPTQ of the merged model with gptqmodel, calibrated on training requests (paper: 300)."""

    SECTION: ClassVar[str] = "gptq"
    bits: int = 4
    # must divide every linear layer's input width: SmolLM2-135M is 576 wide, so 128 is rejected; 64 works
    group_size: int = 64
    desc_act: bool = False
    sym: bool = True
    damp_percent: float = 0.05
    calibration_samples: int = 300  # drawn with `seed` from the training split, prompt + answer
    # requests per calibration forward pass; gptqmodel sorts them by length and leaves the padding out of
    # every Hessian, so a batch changes the float summation order only. 16: 1.7x faster than 1 on 2 cores
    # (AVX2: 291-306 -> 170-172 s), the same validation exact match and KL in two seeds (docs/measurements.md)
    batch_size: int = 16
    seed: int = 42
    device: str = "auto"  # auto: cuda when present, else cpu | cpu | cuda
    # the dtype the model is calibrated in. auto: bfloat16 where the hardware computes it, else float32 (cpu)
    # or float16 (cuda). gptqmodel's own default is bfloat16 on every CPU: emulated on AVX2, 3.6x slower there.
    # The saved embeddings and norms are bfloat16 after a float32 calibration (store_unquantized_as)
    dtype: str = "auto"
    threads: int = 2

    def __post_init__(self):
        check(self.bits in (2, 3, 4, 8), "bits", "2, 3, 4 or 8", self.bits)
        check(
            self.group_size == -1 or is_pos_int(self.group_size),
            "group_size",
            "a positive integer, or -1 for one group per row",
            self.group_size,
        )
        check(0 < self.damp_percent < 1, "damp_percent", "a number in (0, 1)", self.damp_percent)
        check(
            is_pos_int(self.calibration_samples), "calibration_samples", "a positive integer", self.calibration_samples
        )
        check(is_pos_int(self.batch_size), "batch_size", "a positive integer", self.batch_size)
        check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        check(self.dtype in ("auto", *DTYPES), "dtype", "auto, float32, bfloat16 or float16", self.dtype)
        check(is_pos_int(self.threads), "threads", "a positive integer", self.threads)


def resolve_dtype(name: str, device: str, cpu_flags: list[str] | None = None) -> str:
    if name != "auto":
        return name
    if native_bf16(device, cpu_flags):
        return "bfloat16"
    return "float16" if device == "cuda" else "float32"


def store_unquantized_as(model, dtype: str) -> None:
    """Cast the weights GPTQ leaves in floating point (embeddings, norms) to `dtype` before saving.

    They are saved as they were calibrated, and a float32 embedding alone is 108 MiB of SmolLM2-135M's
    file; stored in bfloat16, as gptqmodel's own CPU default stores them, the variant has the same size
    whichever machine made it. The packed weights and their float16 scales are buffers, left alone."""
    import torch

    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(getattr(torch, dtype))
    model.config.dtype = getattr(torch, dtype)


def linear_input_widths(model_config: dict) -> dict[str, int]:
    """Input width of each kind of linear layer in a Llama-style decoder."""
    hidden = model_config["hidden_size"]
    heads = model_config["num_attention_heads"]
    head_dim = model_config.get("head_dim") or hidden // heads
    return {
        "hidden_size (q/k/v/gate/up_proj)": hidden,
        "heads x head_dim (o_proj)": heads * head_dim,
        "intermediate_size (down_proj)": model_config["intermediate_size"],
    }


def check_group_size(group_size: int, model_config: dict, source: Path) -> None:
    """Fail up front: a group size that does not divide a layer's width is rejected by every fast kernel."""
    if group_size == -1:
        return
    widths = linear_input_widths(model_config)
    bad = {name: width for name, width in widths.items() if width % group_size}
    if bad:
        divisor = math.gcd(*widths.values())
        fits = [g for g in (32, 64, 128, 256) if divisor % g == 0]
        raise ParamError(
            f"params.yaml: gptq.group_size: {group_size} does not divide {bad} of {source}; "
            f"expected a divisor of {divisor}{f' such as {fits[-1]}' if fits else ''}, or -1"
        )


def calibration_texts(rows: list[dict], tokenizer, n: int, seed: int) -> list[str]:
    if len(rows) < n:
        raise GptqError(f"gptq.calibration_samples: {n} requested but the training split has {len(rows)} rows")
    picked = random.Random(seed).sample(rows, n)
    return [
        tokenizer.apply_chat_template(prompt_messages(r["text"]) + completion_messages(intent_of(r)), tokenize=False)
        for r in picked
    ]


def greedy_answers(model, tokenizer, texts: list[str], max_new_tokens: int = 32) -> list[list[int]]:
    import torch

    answers = []
    for text in texts:
        batch = tokenizer.apply_chat_template(
            prompt_messages(text), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        answers.append(out[0, batch["input_ids"].shape[1] :].tolist())
    return answers


def quantize(cfg: GptqConfig, merged_dir: Path, train_file: Path, out_dir: Path, log_file: Path | None = None) -> dict:
    """Quantize, save atomically to out_dir, verify the reload; return the variant's description."""
    for path, what in (
        (merged_dir / "config.json", "merged model (run merge)"),
        (train_file, "training split (run synthesize)"),
    ):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing {what}")
    check_group_size(cfg.group_size, json.loads((merged_dir / "config.json").read_text()), merged_dir / "config.json")
    configure_gptqmodel(cfg.threads)
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg.threads)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise GptqError("gptq.device: cuda requested but torch sees no CUDA device")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    texts = calibration_texts(read_jsonl(train_file), tokenizer, cfg.calibration_samples, cfg.seed)
    qcfg = QuantizeConfig(
        bits=cfg.bits,
        group_size=cfg.group_size,
        desc_act=cfg.desc_act,
        sym=cfg.sym,
        damp_percent=cfg.damp_percent,
        format="gptq",
        offload_to_disk=False,
    )
    dtype = resolve_dtype(cfg.dtype, device)
    stored = "bfloat16" if dtype == "float32" else dtype  # see store_unquantized_as
    start = time.perf_counter()
    model = GPTQModel.load(str(merged_dir), qcfg, device=device, dtype=getattr(torch, dtype))
    model.quantize(texts, batch_size=cfg.batch_size, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    store_unquantized_as(model.model, stored)
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        del model
        # gptqmodel's per-layer log holds timings: inside the model folder it changed the folder's hash on
        # every rerun (and reran eval@gptq and bench@gptq for the same weights), so it goes beside the metrics
        quant_log = Path(tmp, "quant_log.csv")
        log_text = quant_log.read_text() if quant_log.exists() else None
        quant_log.unlink(missing_ok=True)
        # The saved checkpoint must behave like the model that was just quantized: load it the
        # supported way (transformers) and with gptqmodel's own loader, compare greedy answers.
        reloaded = load_gptq(tmp, cfg.threads, device)
        native = GPTQModel.load(str(tmp), device=device, dtype=getattr(torch, stored))
        ours, theirs = (
            greedy_answers(reloaded, tokenizer, CHECK_TEXTS),
            greedy_answers(native.model, tokenizer, CHECK_TEXTS),
        )
        if ours != theirs:
            raise GptqError(f"{out_dir}: transformers and gptqmodel load different models from the checkpoint")
        kernel = type(reloaded.model.layers[0].self_attn.q_proj).__name__
        sample = tokenizer.decode(ours[0], skip_special_tokens=True)
    if log_file is not None and log_text is not None:  # written once the checked model is in place
        atomic_write_text(log_file, log_text)
    weights = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    parameters = count_parameters(merged_dir)
    return {
        "variant": "gptq",
        "format": "gptq v1",
        "path": str(out_dir),
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "desc_act": cfg.desc_act,
        "sym": cfg.sym,
        "calibration_samples": cfg.calibration_samples,
        "batch_size": cfg.batch_size,
        "file_bytes": weights,
        "parameters": parameters,
        "bits_per_weight": round(8 * weights / parameters, 3),
        "device": device,
        "dtype": dtype,
        "stored_dtype": stored,
        "kernel": kernel,
        "quantize_seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "check_answer": sample,
        "gptqmodel": _version("gptqmodel"),
        "torch": torch.__version__,
    }


def count_parameters(model_dir: Path) -> int:
    """Parameters of a full-precision checkpoint, read from its safetensors headers (embeddings included)."""
    from safetensors import safe_open

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@stage_main("quantize_gptq")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    info = quantize(GptqConfig.load(), MERGED_DIR, TRAIN_FILE, GPTQ_DIR, VARIANT_INFO_DIR / "gptq_quant_log.csv")
    write_json(variant_info("gptq"), info)
    return (
        f"{info['bits']}-bit g{info['group_size']} in {info['quantize_seconds']} s, "
        f"{info['file_bytes'] / 2**20:.1f} MiB, kernel {info['kernel']}: {info['check_answer']} -> {GPTQ_DIR}"
    )


if __name__ == "__main__":
    sys.exit(main())
