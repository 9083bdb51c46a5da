"""Every model variant the project measures, by name: where it lives and which engine runs it.

    base     models/base            the untuned base, prompted few-shot (the paper's baseline)
    merged   models/merged          base + adapter, full precision
    gptq     models/gptq            GPTQ 4-bit (gptqmodel)
    F16      models/gguf/F16.gguf   llama.cpp, unquantized
    Q4_K_M   models/gguf/Q4_K_M.gguf, and every other level in gguf.levels (Q3_K_M-imat, IQ4_XS, ...)
    api:NAME                        a model behind an OpenAI-compatible endpoint, prompted few-shot

dvc.yaml's `eval` and `bench` foreach lists repeat FOLDER_VARIANTS and F16 (a test checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ecommerce_slm.cli import ProjectError
from ecommerce_slm.gguf_file import file_type, normalize_level, quant_levels
from ecommerce_slm.paths import BASE_DIR, F16_FILE, GPTQ_DIR, MERGED_DIR, gguf_file

FOLDER_VARIANTS = {"base": BASE_DIR, "merged": MERGED_DIR, "gptq": GPTQ_DIR}
REFERENCE = "merged"  # what KL divergence is measured from
REFERENCE_DIR = MERGED_DIR
# The variants every report row is built from (then each of gguf.levels); base and API models are
# accuracy-only references (no bench: base is prompted differently, an API runs elsewhere).
MEASURED_VARIANTS = ("merged", "gptq", "F16")
REFERENCE_VARIANTS = ("base",)


class VariantError(ProjectError, ValueError):
    pass


@dataclass(frozen=True)
class Variant:
    name: str
    engine: str  # transformers | llama_cpp | api
    location: str  # model folder, .gguf file, or API model name
    few_shot: bool = False  # never trained on the task: worked examples go in its prompt

    @property
    def file_stem(self) -> str:
        """Its metrics files' name under metrics/eval/ and metrics/bench/: `api-MODEL` for API models, as
        dvc.yaml writes it (a model name such as meta-llama/Llama-3.1-8B-Instruct becomes a subfolder)."""
        return self.name.replace(":", "-")


def resolve(name: str) -> Variant:
    """A variant by name (case-insensitive for GGUF levels); raises VariantError naming the known ones."""
    if name in FOLDER_VARIANTS:
        return Variant(name, "transformers", str(FOLDER_VARIANTS[name]), few_shot=name == "base")
    if name.upper() == "F16":
        return Variant("F16", "llama_cpp", str(F16_FILE))
    level = normalize_level(name)
    if file_type(level) in quant_levels():
        return Variant(level, "llama_cpp", str(gguf_file(level)))
    if name.startswith("api:") and len(name) > 4:
        model = name[4:]
        if model.startswith("/") or "\\" in model or ".." in model.split("/"):
            raise VariantError(f"{name}: expected a model name (segments separated by '/', no '..'), got {model!r}")
        return Variant(name, "api", model, few_shot=True)
    raise VariantError(
        f"unknown variant {name!r}: expected one of {', '.join(FOLDER_VARIANTS)}, F16, a GGUF level "
        f"({', '.join(quant_levels())}, optionally -imat) or api:MODEL"
    )


def from_path(path: str) -> Variant:
    """Any model folder or .gguf file, evaluated as a trained variant (zero-shot prompt)."""
    engine = "llama_cpp" if path.endswith(".gguf") else "transformers"
    return Variant(Path(path).name.removesuffix(".gguf"), engine, path)
