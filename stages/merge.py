"""Stage `merge`: base (reloaded in full precision, never 4-bit) + adapter -> models/merged/.

    python -m stages.merge               # reads params.yaml: merge

Checks before saving: only floating-point tensors remain, no quantization config is left, and the
merged model's logits match base+adapter on a probe batch within `merge.tolerance`. A full fine-tune
(`train.method: full`) has no adapter: its model is checked the same way and saved as it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_dir, write_json
from ecommerce_slm.params import Section, check
from ecommerce_slm.paths import ADAPTER_DIR, BASE_DIR, MERGE_METRICS, MERGED_DIR
from ecommerce_slm.task import prompt_messages

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE_TEXTS = [
    "Can you delet 12 lip balms for me?",
    "Bok, ubaci dvije paste za zube u košaricu pls",
    "¿me quitas tres cremas de manos?",
    "remove the shampoo",
]


@dataclass
class MergeConfig(Section):
    """`merge:` the adapter merged into a full-precision reload of the base (never the 4-bit one)."""

    SECTION: ClassVar[str] = "merge"
    # auto: float32 on every device. In bfloat16 on a GPU, half of a sweep's adapters (lr 1e-3, NEFTune, more
    # typos) failed the tolerance below by 2-5x (docs/measurements.md "Learning rate for 650 steps"), and
    # the merged weights should not depend on which device merged them | float32 | bfloat16 | float16 (for
    # models too big to merge in float32)
    dtype: str = "auto"
    # max |logit difference| between base+adapter and the merged model, relative to the largest |logit|;
    # auto: 1e-4 in float32, 3e-2 in half precision (bf16 keeps ~3 significant digits)
    tolerance: Any = "auto"

    def __post_init__(self):
        check(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            "auto, float32, bfloat16 or float16",
            self.dtype,
        )
        check(
            self.tolerance == "auto"
            or (
                isinstance(self.tolerance, (int, float))
                and not isinstance(self.tolerance, bool)
                and 0 < self.tolerance < float("inf")
            ),
            "tolerance",
            "auto or a number > 0",
            self.tolerance,
        )

    def tolerance_for(self, dtype_name: str) -> float:
        if self.tolerance != "auto":
            return float(self.tolerance)
        return 1e-4 if dtype_name == "float32" else 3e-2


class MergeError(ProjectError, RuntimeError):
    pass


def merge_dtype(cfg: MergeConfig) -> torch.dtype:
    return torch.float32 if cfg.dtype == "auto" else DTYPES[cfg.dtype]


def probe_batch(tokenizer):
    prompts = [
        tokenizer.apply_chat_template(prompt_messages(t), add_generation_prompt=True, tokenize=False)
        for t in PROBE_TEXTS
    ]
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def non_float_tensors(model) -> list[str]:
    """Names of parameters or buffers that are not plain floating point (4-bit, int8, packed...)."""
    bad = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point() or type(tensor).__name__ not in ("Parameter", "Tensor"):
            bad.append(f"{name} ({type(tensor).__name__}, {tensor.dtype})")
    return bad


def merge(cfg: MergeConfig, base_dir: Path = BASE_DIR, adapter_dir: Path = ADAPTER_DIR) -> tuple[object, object, dict]:
    """Return (merged model, tokenizer, report); raises MergeError if a check fails."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (base_dir / "config.json").exists():
        raise FileNotFoundError(f"{base_dir / 'config.json'}: missing base model (run prepare_base)")
    if not (adapter_dir / "adapter_config.json").exists():
        if (adapter_dir / "config.json").exists():  # train.method full saved a whole model
            return full_fine_tune(cfg, adapter_dir)
        raise FileNotFoundError(f"{adapter_dir / 'adapter_config.json'}: missing adapter (run train)")
    dtype = merge_dtype(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    if getattr(base.config, "quantization_config", None):
        raise MergeError(f"{base_dir}: the base carries a quantization_config; merge needs full-precision weights")
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    batch = probe_batch(tokenizer).to(device)
    with torch.no_grad():
        expected = model(**batch).logits.float()
        merged = model.merge_and_unload().eval()
        actual = merged(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    max_diff = (expected - actual).abs()[mask].max().item()
    scale = expected[mask].abs().max().item()
    dtype_name = str(dtype).removeprefix("torch.")
    tolerance = cfg.tolerance_for(dtype_name)
    if max_diff > tolerance * scale:
        raise MergeError(
            f"merged logits differ from base+adapter by {max_diff:.3g}, more than merge.tolerance "
            f"{tolerance} x max |logit| {scale:.3g}"
        )
    leftovers = non_float_tensors(merged)
    if leftovers:
        raise MergeError(f"merged model still has non-float tensors: {leftovers[:5]}")
    report = {
        "dtype": dtype_name,
        "device": device,
        "method": "lora",
        "max_logit_diff": max_diff,
        "relative_logit_diff": max_diff / scale,
        "tolerance": tolerance,
        "parameters": sum(p.numel() for p in merged.parameters()),
    }
    return merged, tokenizer, report


def full_fine_tune(cfg: MergeConfig, model_dir: Path) -> tuple[object, object, dict]:
    """train.method full saved a whole model: nothing to merge, the same checks on what is saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = merge_dtype(cfg)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    if getattr(model.config, "quantization_config", None):
        raise MergeError(f"{model_dir}: the fine-tuned model carries a quantization_config")
    leftovers = non_float_tensors(model)
    if leftovers:
        raise MergeError(f"{model_dir}: the fine-tuned model has non-float tensors: {leftovers[:5]}")
    report = {
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "method": "full",
        "max_logit_diff": 0.0,
        "relative_logit_diff": 0.0,
        "tolerance": cfg.tolerance_for(str(dtype).removeprefix("torch.")),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, AutoTokenizer.from_pretrained(model_dir), report


def save_merged(model, tokenizer, out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


@stage_main("merge")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    start = time.perf_counter()
    model, tokenizer, report = merge(MergeConfig.load())
    save_merged(model.cpu(), tokenizer, MERGED_DIR)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(MERGE_METRICS, report)
    return f"{report['parameters'] / 1e6:.1f}M parameters ({report['dtype']}), max logit diff {report['max_logit_diff']:.2e} -> {MERGED_DIR}"


if __name__ == "__main__":
    sys.exit(main())
