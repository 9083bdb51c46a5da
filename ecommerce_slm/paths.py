"""Where everything lives, relative to the project root (dvc.yaml names the same paths).

Resource files ship inside the package. RESOURCES_READ maps each constant naming one to the file that
code using it reads, so the deps test (tests/test_stage_deps.py) can require every stage whose code
uses the constant to declare that file in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).parent
RESOURCES = PACKAGE / "resources"
SLOTS_FILE = RESOURCES / "slots.yaml"
NOISE_FILE = RESOURCES / "noise.yaml"
DEFAULT_CATALOG = "ecommerce_slm/resources/catalog.yaml"  # as params.yaml writes it (data.catalog, eval.catalog)
PARETO_TEMPLATE_DIR = Path(".dvc/plots")  # pareto.json: the Vega-Lite template of `dvc plots` and the PNGs
PARETO_TEMPLATE = PARETO_TEMPLATE_DIR / "pareto.json"

DATA = Path("data")
TRAIN_FILE = DATA / "train.jsonl"
VALIDATION_FILE = DATA / "validation.jsonl"
EVAL_FILE = DATA / "eval.jsonl"
HANDWRITTEN_FILE = DATA / "handwritten.jsonl"  # in git: requests written by hand, a second held-out test set

RESOURCES_READ = {
    "SLOTS_FILE": SLOTS_FILE,
    "NOISE_FILE": NOISE_FILE,
    "PARETO_TEMPLATE_DIR": PARETO_TEMPLATE,
    "PARETO_TEMPLATE": PARETO_TEMPLATE,
    "HANDWRITTEN_FILE": HANDWRITTEN_FILE,
}

MODELS = Path("models")
BASE_DIR = MODELS / "base"
ADAPTER_DIR = MODELS / "adapter"
CHECKPOINT_DIR = MODELS / "checkpoints" / "train"  # scratch: a killed training run resumes from here
MERGED_DIR = MODELS / "merged"
GPTQ_DIR = MODELS / "gptq"
GGUF_DIR = MODELS / "gguf"
F16_FILE = GGUF_DIR / "F16.gguf"
IMATRIX_FILE = GGUF_DIR / "imatrix.gguf"  # llama-imatrix over training requests (stage imatrix)
IMATRIX_TEXT = GGUF_DIR / "imatrix_calibration.txt"  # what it read
KL_REFERENCE_DIR = MODELS / "kl_reference"  # what every variant's KL is measured against (stage kl_reference)

METRICS = Path("metrics")
DATA_STATS = METRICS / "data.json"  # compact, so `dvc exp show` stays readable
DATA_DETAILS = METRICS / "data_details.json"  # counts per split, language, action and product
TRAIN_METRICS = METRICS / "train.json"
MERGE_METRICS = METRICS / "merge.json"
HARDWARE_FILE = METRICS / "hardware.json"
EVAL_DIR = METRICS / "eval"
HANDWRITTEN_DIR = METRICS / "handwritten"  # every variant's scores on HANDWRITTEN_FILE
BENCH_DIR = METRICS / "bench"
VARIANT_INFO_DIR = METRICS / "variants"  # what each quantized file really is
PARETO_DIR = METRICS / "pareto"
SUMMARY_FILE = METRICS / "summary.json"
IMATRIX_METRICS = METRICS / "imatrix.json"
SERVE_METRICS = METRICS / "serve.json"  # the served variant under load (stage load_test)
LIVE_DIR = Path("dvclive/train")
REPORTS = Path("reports")


def gguf_file(level: str) -> Path:
    return GGUF_DIR / f"{level}.gguf"


def variant_info(name: str) -> Path:
    return VARIANT_INFO_DIR / f"{name}.json"
