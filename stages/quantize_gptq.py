"""Stage `quantize_gptq`: models/merged/ -> models/gptq/ (GPTQ v1 format, loadable by transformers).

    python -m stages.quantize_gptq       # reads params.yaml: gptq

gptqmodel (the maintained successor of auto-gptq) calibrates on `gptq.calibration_samples` training
requests, rendered with the chat template as prompt + answer, as in the paper. Before saving, the
checkpoint is reloaded the way every user loads it (transformers `from_pretrained`, no
quantization_config) and must give the same greedy answers as the model right after quantization.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

from stages.config import GptqConfig, ParamError
from stages.files import atomic_dir, read_jsonl, write_json
from stages.task import completion_messages, intent_of, prompt_messages

MERGED_DIR = Path("models/merged")
TRAIN_FILE = Path("data/train.jsonl")
OUT_DIR = Path("models/gptq")
INFO_FILE = Path("metrics/variants/gptq.json")
CHECK_TEXTS = ["Can you delet 12 lip balms for me?", "Bok, ubaci dvije paste za zube u košaricu pls",
               "¿me quitas tres cremas de manos?"]


class GptqError(RuntimeError):
    pass


def configure_gptqmodel(threads: int) -> None:
    """Environment gptqmodel reads at import; call before importing it (also before loading a GPTQ model).

    Its JIT-compiled kernels are cached inside the environment, not in the user's home, and its CPU
    worker pool needs an explicit size on small machines (with 2 cores its default of 1 crashes:
    "Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1").
    """
    os.environ.setdefault("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "gptqmodel-extensions"))
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, threads)))


def linear_input_widths(model_config: dict) -> dict[str, int]:
    """Input width of each kind of linear layer in a Llama-style decoder."""
    hidden = model_config["hidden_size"]
    heads = model_config["num_attention_heads"]
    head_dim = model_config.get("head_dim") or hidden // heads
    return {"hidden_size (q/k/v/gate/up_proj)": hidden, "heads x head_dim (o_proj)": heads * head_dim,
            "intermediate_size (down_proj)": model_config["intermediate_size"]}


def check_group_size(group_size: int, model_config: dict, source: Path) -> None:
    """Fail up front: a group size that does not divide a layer's width is rejected by every fast kernel."""
    if group_size == -1:
        return
    widths = linear_input_widths(model_config)
    bad = {name: width for name, width in widths.items() if width % group_size}
    if bad:
        divisor = math.gcd(*widths.values())
        fits = [g for g in (32, 64, 128, 256) if divisor % g == 0]
        raise ParamError(f"params.yaml: gptq.group_size: {group_size} does not divide {bad} of {source}; "
                         f"expected a divisor of {divisor}{f' such as {fits[-1]}' if fits else ''}, or -1")


def calibration_texts(rows: list[dict], tokenizer, n: int, seed: int) -> list[str]:
    if len(rows) < n:
        raise GptqError(f"gptq.calibration_samples: {n} requested but the training split has {len(rows)} rows")
    picked = random.Random(seed).sample(rows, n)
    return [tokenizer.apply_chat_template(prompt_messages(r["text"]) + completion_messages(intent_of(r)), tokenize=False)
            for r in picked]


def greedy_answers(model, tokenizer, texts: list[str], max_new_tokens: int = 32) -> list[list[int]]:
    import torch

    answers = []
    for text in texts:
        batch = tokenizer.apply_chat_template(prompt_messages(text), add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(out[0, batch["input_ids"].shape[1]:].tolist())
    return answers


def load_gptq(model_dir: str | Path, threads: int = 2, device: str = "cpu"):
    """Load a GPTQ checkpoint the way users do: transformers reads quantize_config from config.json.

    Never pass a quantization_config here: transformers then ignores the saved one and builds plain
    layers whose quantized weights are left uninitialised, so the model answers with noise.
    """
    configure_gptqmodel(threads)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map=device).eval()
    if getattr(model.config, "quantization_config", None) is None:
        raise GptqError(f"{model_dir}: loaded without a GPTQ quantization_config")
    return model


def quantize(cfg: GptqConfig, merged_dir: Path, train_file: Path, out_dir: Path) -> dict:
    """Quantize, save atomically to out_dir, verify the reload; return the variant's description."""
    for path, what in ((merged_dir / "config.json", "merged model (run merge)"), (train_file, "training split (run synthesize)")):
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
    qcfg = QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, desc_act=cfg.desc_act, sym=cfg.sym,
                          damp_percent=cfg.damp_percent, format="gptq", offload_to_disk=False)
    start = time.perf_counter()
    model = GPTQModel.load(str(merged_dir), qcfg, device=device)
    model.quantize(texts, batch_size=1, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        del model
        # The saved checkpoint must behave like the model that was just quantized: load it the
        # supported way (transformers) and with gptqmodel's own loader, compare greedy answers.
        reloaded = load_gptq(tmp, cfg.threads, device)
        native = GPTQModel.load(str(tmp), device=device)
        ours, theirs = greedy_answers(reloaded, tokenizer, CHECK_TEXTS), greedy_answers(native.model, tokenizer, CHECK_TEXTS)
        if ours != theirs:
            raise GptqError(f"{out_dir}: transformers and gptqmodel load different models from the checkpoint")
        kernel = type(reloaded.model.layers[0].self_attn.q_proj).__name__
        sample = tokenizer.decode(ours[0], skip_special_tokens=True)
    weights = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    parameters = count_parameters(merged_dir)
    return {"variant": "gptq", "format": "gptq v1", "path": str(out_dir), "bits": cfg.bits, "group_size": cfg.group_size,
            "desc_act": cfg.desc_act, "sym": cfg.sym, "calibration_samples": cfg.calibration_samples,
            "file_bytes": weights, "parameters": parameters, "bits_per_weight": round(8 * weights / parameters, 3),
            "device": device, "kernel": kernel, "quantize_seconds": round(seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "check_answer": sample,
            "gptqmodel": _version("gptqmodel"), "torch": torch.__version__}


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


def main() -> int:
    try:
        cfg = GptqConfig.load()
        info = quantize(cfg, MERGED_DIR, TRAIN_FILE, OUT_DIR)
    except (ParamError, FileNotFoundError, GptqError) as err:
        print(f"quantize_gptq: error: {err}", file=sys.stderr)
        return 1
    write_json(INFO_FILE, info)
    print(f"quantize_gptq: {info['bits']}-bit g{info['group_size']} in {info['quantize_seconds']} s, "
          f"{info['file_bytes'] / 2**20:.1f} MiB, kernel {info['kernel']}: {info['check_answer']} -> {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
