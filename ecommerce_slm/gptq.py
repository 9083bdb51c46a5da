"""gptqmodel's environment and loading a GPTQ checkpoint: shared by the quantize_gptq stage and every
engine that may open a GPTQ folder (evaluation, benchmark)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ecommerce_slm.cli import ProjectError


class GptqError(ProjectError, RuntimeError):
    pass


def configure_gptqmodel(threads: int) -> None:
    """Environment gptqmodel reads at import; call before importing it (also before loading a GPTQ model).

    Its JIT-compiled kernels are cached inside the environment, not in the user's home, and its CPU
    worker pool needs an explicit size on small machines (with 2 cores its default of 1 crashes:
    "Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1").
    """
    os.environ.setdefault("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "gptqmodel-extensions"))
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, threads)))


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
