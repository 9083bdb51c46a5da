"""The GPU path of train and merge, end to end, on a small random Llama: what CI (CPU only) cannot run.

    python -m tools.cuda_check --out docs/cuda_check.json
    python -m tools.cuda_check --tokenizer DIR --out ...    # a machine without the embedded GGUF

On a machine with CUDA, with the default `train:` params except the step count and the rate: plain
LoRA and QLoRA (4-bit NF4 base through bitsandbytes, the paper's recipe) each train on the GPU as the
train stage does (`compute_dtype: auto`, `attention: auto`), score their own greedy answers there
(`validation_scores`), and are merged there under `merge.tolerance` (`merge.dtype: auto`). The model has
SmolLM2-135M's widths (576 / 1536, 9 heads, 3 KV heads) and two layers, so bitsandbytes quantizes the
real shapes in seconds. Each check that fails is listed and the exit status is 1. Without CUDA it
refuses: these are the code paths a CPU never takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import write_json, write_jsonl
from ecommerce_slm.machine import cpu_info
from tools.tiny_llama import save_tiny_llama

SMOLLM2_WIDTHS = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}
STEPS = 40
PRODUCTS = ("Shampoo", "Lip Balm", "Socks", "Umbrella", "Webcam", "Candle")


def request_rows() -> list[dict]:
    """Requests simple enough that a random two-layer model learns their answers in STEPS steps."""
    return [
        {"text": f"{verb} {n} {product.lower()}", "action": action, "product": product, "quantity": n}
        for verb, action in (("add", "add"), ("remove", "remove"))
        for product in PRODUCTS
        for n in range(1, 6)
    ]


class BaseWeights(TrainerCallback):
    """Records what the weights under the adapters are when training starts."""

    def __init__(self):
        self.seen = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from bitsandbytes.nn import Linear4bit

        layers = [m for m in model.modules() if isinstance(m, Linear4bit)]  # bitsandbytes' own, not peft's wrapper
        self.seen = {
            "linear4bit_layers": len(layers),
            "quant_type": layers[0].weight.quant_type if layers else None,
            "devices": sorted({str(p.device) for p in model.parameters()}),
        }


def run_variant(quantization: str, model_dir: Path, scratch: Path) -> dict:
    """Train on scratch/train.jsonl, score scratch/validation.jsonl, merge: on the GPU, as the stages do."""
    from stages.merge import MergeConfig, merge
    from stages.train import TrainConfig, train

    cfg = dataclasses.replace(
        TrainConfig.load(),
        quantization=quantization,
        max_steps=STEPS,
        learning_rate=3e-3,
        save_steps=STEPS,
        eval_steps=STEPS,
        logging_steps=5,
        score_examples=len(request_rows()),
        compile_layers=False,
    )
    recorder = BaseWeights()
    summary = train(
        cfg,
        base_dir=model_dir,
        train_file=scratch / "train.jsonl",
        validation_file=scratch / "validation.jsonl",
        adapter_dir=scratch / f"adapter-{quantization}",
        checkpoint_dir=scratch / f"ckpt-{quantization}",
        live_dir=None,
        callbacks=[recorder],
    )
    _, _, report = merge(MergeConfig(), model_dir, scratch / f"adapter-{quantization}")
    keep = ("steps", "train_seconds", "seconds_per_step", "first_loss", "final_loss", "device", "peak_vram_mb")
    keep += ("compute_dtype", "attention", "quantization", "validation_exact_match", "validation_score_seconds")
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    weights = {**recorder.seen, "adapted_layers": len(cfg.target_modules) * layers}
    return {"train": {k: summary.get(k) for k in keep}, "base_weights": weights, "merge": report}


def failures(name: str, result: dict, has_bf16: bool) -> list[str]:
    trained, weights, merged = result["train"], result["base_weights"], result["merge"]
    wanted_dtype = "bfloat16" if has_bf16 else "float32"
    checks = {
        "trained on cuda": trained["device"] == "cuda" and weights["devices"] == ["cuda:0"],
        f"compute dtype {wanted_dtype} (auto)": trained["compute_dtype"] == wanted_dtype,
        "sdpa attention (auto on a GPU)": trained["attention"] == "sdpa",
        "loss fell": trained["final_loss"] < trained["first_loss"],
        "validation answers decoded by the model on the GPU": trained["validation_exact_match"] is not None,
        "merged on cuda in float32 within tolerance": merged["device"] == "cuda"
        and merged["dtype"] == "float32"
        and merged["relative_logit_diff"] <= merged["tolerance"],
    }
    if name == "nf4":
        checks["every adapted linear layer is 4-bit NF4"] = (
            weights["linear4bit_layers"] == weights["adapted_layers"] and weights["quant_type"] == "nf4"
        )
    return [f"{name}: {check}" for check, ok in checks.items() if not ok]


@stage_main("cuda_check")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: the embedded GGUF's)")
    parser.add_argument("--out", type=Path, default=Path("docs/cuda_check.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise ProjectError("tools.cuda_check: no CUDA device here; it checks the code paths only a GPU takes")
    from transformers import AutoTokenizer

    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from stages.prepare_base import resolve_source

        source = resolve_source("embedded:SmolLM2-135M-Instruct")
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    results, failed = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = save_tiny_llama(Path(scratch, "model"), tokenizer, **SMOLLM2_WIDTHS)
        rows = request_rows()
        write_jsonl(Path(scratch, "train.jsonl"), rows)
        write_jsonl(Path(scratch, "validation.jsonl"), rows)  # scored as validation: does the GPU path decode
        for quantization in ("none", "nf4"):
            results[quantization] = run_variant(quantization, model_dir, Path(scratch))
            failed += failures(quantization, results[quantization], torch.cuda.is_bf16_supported())
    write_json(
        args.out,
        {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "cpu": cpu_info()["model"],
            "results": results,
            "failed": failed,
        },
    )
    if failed:
        raise ProjectError(f"{len(failed)} checks failed: {'; '.join(failed)} (details in {args.out})")
    return f"every check passed on {torch.cuda.get_device_name()} -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
