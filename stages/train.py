"""Stage `train`: a LoRA adapter (plain, or QLoRA on a 4-bit NF4 base), or a full fine-tune, on the synthesized data.

    python -m stages.train               # reads params.yaml: train

Loss is on the completion only (the JSON answer), through trl's prompt/completion format.
Checkpoints go to models/checkpoints/train every `save_steps`; a rerun with the same params, data and
base resumes from the last one, anything else starts over. The adapter (or, with `method: full`, the
whole model) appears in models/adapter only when training has finished. Afterwards the first
`score_examples` validation rows are decoded greedily and scored: `validation_exact_match` in
metrics/train.json is the number to compare experiments by (never the eval or hand-written sets).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ecommerce_slm.allocator import in_use as allocator_in_use
from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import atomic_dir, read_jsonl, write_json
from ecommerce_slm.machine import cpu_info, native_bf16
from ecommerce_slm.params import ParamError, Section, check, is_pos_int, is_rate, yaml_number
from ecommerce_slm.paths import (
    ADAPTER_DIR,
    BASE_DIR,
    CHECKPOINT_DIR,
    LIVE_DIR,
    TRAIN_FILE,
    TRAIN_METRICS,
    VALIDATION_FILE,
)
from ecommerce_slm.task import completion_messages, intent_of, prompt_messages

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LINEAR_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# `max_steps: auto` and `learning_rate: auto` are looked up by step budget, the compute dtype and, for bf16 on a
# CPU, what does its matmuls: AMX's tile units (1.1 s a step on a Xeon) or AVX512_BF16's vector dot products alone
# (1.2-1.5 s on an AMD Zen 4), so that each class trains for the same ~12-14 minutes
STEP_BUDGETS = ("float32", "bfloat16", "bfloat16_avx512", "float16")
AUTO_STEPS = {"float32": 250, "bfloat16": 650, "bfloat16_avx512": 500, "float16": 500}
# the best measured rate for each budget: 2e-3 at 220 float32 steps (EPYC, validation; kept at 250), 1e-3
# at 650 bf16 steps (Xeon and H200, the slice dev set); 500 steps (Zen 4's bf16, GPU float16) take the nearest budget's
AUTO_LEARNING_RATES = {"float32": 2e-3, "bfloat16": 1e-3, "bfloat16_avx512": 1e-3, "float16": 1e-3}
ATTENTIONS = ("auto", "eager", "sdpa")
# peft's init_lora_weights for each train.lora_init: default starts the adapter as a no-op (A random, B
# zero); pissa and olora start it on the top singular vectors / a QR factor of each weight and train
# that part, the rest frozen (the saved adapter is converted back to one on the unchanged base)
LORA_INITS = {"default": True, "pissa": "pissa", "olora": "olora"}
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig(Section):
    """`train:` QLoRA (or plain LoRA) with trl's SFTTrainer, loss on the JSON answer only.

    Defaults suit the embedded 135M model on 2 CPU cores (13-14 minutes of training on an AVX2 laptop CPU
    and on one with native bf16 alike: `max_steps: auto`). The paper's recipe
    (r=8, alpha=16, dropout 0.1, 5 epochs, batch 8, lr 2e-5) is `presets/paper.yaml`.
    """

    SECTION: ClassVar[str] = "train"
    method: str = "lora"  # lora: an adapter on the frozen base | full: every weight trained (quantization none)
    quantization: str = "none"  # none: plain LoRA | nf4: QLoRA, base loaded 4-bit through bitsandbytes
    double_quant: bool = True
    # matmul dtype: auto (bfloat16 where the hardware has it, else float32) | float32 | bfloat16 | float16
    compute_dtype: str = "auto"
    # auto: eager for bf16 on a CPU, sdpa elsewhere | eager | sdpa (transformers' attention implementation)
    attention: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # CPU dropout draws a random mask per LoRA input: 30% of the step time
    # > 0: NEFTune (arXiv 2310.05914), uniform noise of this scale on the input embeddings while training
    neftune_alpha: float = 0.0
    target_modules: list = field(default_factory=lambda: list(LINEAR_PROJECTIONS))
    # adapt only the top N decoder layers (0: all): backpropagation then stops at the lowest adapted one
    lora_top_layers: int = 0
    lora_init: str = "default"  # default | pissa (arXiv 2404.02948) | olora (arXiv 2406.01775): LORA_INITS
    # LoRA+: the B matrices learn this many times faster than the A matrices (1: plain LoRA); 4 scored
    # 5 points above 1 on validation with two seeds, in the same minutes
    loraplus_lr_ratio: float = 4.0
    epochs: float = 1.0
    # > 0 overrides epochs; -1 trains for `epochs`; auto: auto_steps of this machine's step budget (STEP_BUDGETS)
    max_steps: Any = "auto"
    # what fits the same ~12-14 minutes on 2 cores: float32 (AVX2) 2.9-3.4 s/step, bfloat16 (AMX) 1.1 s/step,
    # bfloat16_avx512 (AVX512_BF16 without AMX) 1.2-1.5 s/step
    auto_steps: dict = field(default_factory=lambda: dict(AUTO_STEPS))
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: Any = "auto"  # auto: auto_learning_rate of this machine's step budget | a number in (0, 1)
    auto_learning_rate: dict = field(default_factory=lambda: dict(AUTO_LEARNING_RATES))
    scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_length: int = 256
    seed: int = 42
    threads: int = 2
    gradient_checkpointing: bool = False
    # true: torch.compile each decoder layer (bf16 on a CPU: a step 1.14 -> 0.80 s for ~45 s of compiling;
    # off by default: the compiled runs scored 2.3 points lower on the slice dev set) | auto: on where that
    # speed was measured, a bf16 CPU run | false
    compile_layers: Any = False
    group_by_length: bool = False  # true: batches of similar length (13% of a random batch is padding here)
    padding_free: bool = False  # true: a batch is one sequence with position_ids, no padding tokens at all
    score_examples: int = 200  # validation rows decoded and scored after training (0: none)
    eval_steps: int = 100
    eval_examples: int = 64  # validation rows for the in-training eval loss (the eval stage uses all)
    save_steps: int = 50
    logging_steps: int = 10
    launcher: str = "python"  # python | accelerate (multi-GPU / multi-node via accelerate's own config)

    def __post_init__(self):
        check(self.method in ("lora", "full"), "method", "lora or full", self.method)
        check(self.quantization in ("nf4", "none"), "quantization", "nf4 or none", self.quantization)
        check(
            self.method == "lora" or self.quantization == "none",
            "quantization",
            "none with method full (4-bit weights cannot be trained directly)",
            self.quantization,
        )
        check(
            self.compute_dtype in ("auto", *DTYPES),
            "compute_dtype",
            "auto, float32, bfloat16 or float16",
            self.compute_dtype,
        )
        check(self.attention in ATTENTIONS, "attention", "auto, eager or sdpa", self.attention)
        check(is_pos_int(self.lora_r), "lora_r", "a positive integer", self.lora_r)
        check(self.lora_alpha > 0, "lora_alpha", "a number > 0", self.lora_alpha)
        check(
            is_rate(self.lora_dropout) and self.lora_dropout < 1, "lora_dropout", "a rate in [0, 1)", self.lora_dropout
        )
        check(
            len(self.target_modules) > 0 and all(isinstance(m, str) for m in self.target_modules),
            "target_modules",
            "a non-empty list of module names",
            self.target_modules,
        )
        check(self.neftune_alpha >= 0, "neftune_alpha", "a number >= 0 (0: off)", self.neftune_alpha)
        check(self.loraplus_lr_ratio >= 1, "loraplus_lr_ratio", "a number >= 1 (1: plain LoRA)", self.loraplus_lr_ratio)
        check(self.lora_init in LORA_INITS, "lora_init", ", ".join(LORA_INITS), self.lora_init)
        for name, off in (("lora_top_layers", 0), ("loraplus_lr_ratio", 1), ("lora_init", "default")):
            check(
                self.method == "lora" or getattr(self, name) == off,
                name,
                f"{off} with method full (it has no LoRA matrices)",
                getattr(self, name),
            )
        check(self.epochs > 0, "epochs", "a number > 0", self.epochs)
        check(
            self.max_steps == "auto" or is_pos_int(self.max_steps) or self.max_steps == -1,
            "max_steps",
            "auto, a positive integer, or -1 to use epochs",
            self.max_steps,
        )
        check(
            set(self.auto_steps) == set(STEP_BUDGETS) and all(map(is_pos_int, self.auto_steps.values())),
            "auto_steps",
            f"a step count (positive integer) for each of {', '.join(STEP_BUDGETS)}",
            self.auto_steps,
        )
        for name in (
            "batch_size",
            "gradient_accumulation",
            "max_length",
            "threads",
            "eval_steps",
            "eval_examples",
            "save_steps",
            "logging_steps",
        ):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        for name, note in (("lora_top_layers", " (0: every layer)"), ("score_examples", "")):
            value = getattr(self, name)
            is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            check(is_count, name, f"an integer >= 0{note}", value)
        if self.learning_rate != "auto":
            self.learning_rate = yaml_number(self.learning_rate)
        self.auto_learning_rate = {k: yaml_number(v) for k, v in self.auto_learning_rate.items()}
        check(
            self.learning_rate == "auto" or is_unit_interval(self.learning_rate),
            "learning_rate",
            "auto or a number in (0, 1)",
            self.learning_rate,
        )
        check(
            set(self.auto_learning_rate) == set(STEP_BUDGETS)
            and all(map(is_unit_interval, self.auto_learning_rate.values())),
            "auto_learning_rate",
            f"a learning rate in (0, 1) for each of {', '.join(STEP_BUDGETS)}",
            self.auto_learning_rate,
        )
        check(
            self.scheduler in SCHEDULERS,
            "scheduler",
            "a transformers scheduler name (linear, cosine, constant, ...)",
            self.scheduler,
        )
        check(is_rate(self.warmup_ratio), "warmup_ratio", "a rate in [0, 1]", self.warmup_ratio)
        check(self.launcher in ("python", "accelerate"), "launcher", "python or accelerate", self.launcher)
        check(
            self.compile_layers == "auto" or isinstance(self.compile_layers, bool),
            "compile_layers",
            "auto, true or false",
            self.compile_layers,
        )


def is_unit_interval(value) -> bool:
    return is_rate(value) and 0 < value < 1


def resolve_compute_dtype(name: str, cpu_flags: list[str] | None = None) -> str:
    """`auto`: bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, or a CPU with
    AVX512_BF16 or AMX), float32 elsewhere. Emulated bf16 is no option: on a plain AVX2 CPU a QLoRA step
    took 130 s in bfloat16 against 11.5 s in float32 (docs/measurements.md)."""
    if name != "auto":
        return name
    device = "cuda" if cpu_flags is None and torch.cuda.is_available() else "cpu"
    return "bfloat16" if native_bf16(device, cpu_flags) else "float32"


def step_budget(compute_dtype: str, cpu_flags: list[str] | None = None) -> str:
    """The entry of `auto_steps` and `auto_learning_rate` a run takes: its compute dtype, except bf16 on a CPU
    without AMX (AVX512_BF16 alone, as on AMD Zen 4), whose step costs 1.1-1.35x an AMX one: 650 steps there
    would take 775-970 s against the 900 s budget (docs/measurements.md "A fresh clone on an AMD Zen 4")."""
    on_gpu = cpu_flags is None and torch.cuda.is_available()
    flags = cpu_info()["flags"] if cpu_flags is None else cpu_flags
    if compute_dtype == "bfloat16" and not on_gpu and "amx_bf16" not in flags:
        return "bfloat16_avx512"
    return compute_dtype


def resolve_attention(name: str, compute_dtype: str, on_gpu: bool) -> str:
    """`auto`: eager attention for bf16 on a CPU, sdpa elsewhere. Training rows are ~60 tokens, and PyTorch's
    CPU flash-attention backward in bf16 took 7 ms a layer, 16% of a step; eager's small matmuls and
    softmax cost a fraction of that. In float32 on a CPU the two are a tie, and on a GPU sdpa wins."""
    if name != "auto":
        return name
    return "eager" if compute_dtype == "bfloat16" and not on_gpu else "sdpa"


def resolve_compile_layers(value, compute_dtype: str, quantization: str, on_gpu: bool, has_compiler: bool) -> bool:
    """`auto`: compile the decoder layers where it was measured to be faster, a CPU run in bfloat16 without 4-bit
    weights: most of an uncompiled step there is small element-wise kernels (LoRA's scaling and sums, norms,
    rotary, SwiGLU) between matmuls, which inductor fuses (Xeon with AMX: 1.14 -> 0.80 s a step, ~45 s of
    compiling). Float32 gained 12% there (1.52 -> 1.34 s, ~35 s of compiling), which its 220-step budget
    on an AVX2 CPU would mostly spend compiling; GPUs and bitsandbytes' 4-bit layers: not measured.
    On a CPU inductor needs a C++ compiler: `true` without one is an error, `auto` says it trains eagerly."""
    if value is True and not on_gpu and not has_compiler:
        raise ParamError("params.yaml: train.compile_layers: true needs a C++ compiler (g++, clang++ or $CXX)")
    if value != "auto":
        return value
    wanted = compute_dtype == "bfloat16" and quantization == "none" and not on_gpu
    if wanted and not has_compiler:
        print("train: no C++ compiler (g++, clang++ or $CXX): decoder layers left uncompiled", file=sys.stderr)
    return wanted and has_compiler


def c_compiler() -> str | None:
    """The C++ compiler inductor builds its CPU kernels with (the CXX variable, else g++ or clang++)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    return next((found for name in candidates if (found := shutil.which(name))), None)


def resolve(cfg: TrainConfig, cpu_flags: list[str] | None = None) -> TrainConfig:
    """The config with its `auto` values decided for this machine: the compute dtype first, then the
    attention, the steps that machine's step budget affords and the learning rate for that many steps. The
    step count depends on the machine class, as the dtype does: on an AVX2 CPU float32 steps cost 2.7x bf16 steps
    on one with AMX, and the learning curve rises with every step (docs/measurements.md), so each class gets
    the steps that fit the same minutes; a longer run learns best at a lower rate."""
    dtype = resolve_compute_dtype(cfg.compute_dtype, cpu_flags)
    budget = step_budget(dtype, cpu_flags)
    steps = cfg.auto_steps[budget] if cfg.max_steps == "auto" else cfg.max_steps
    rate = cfg.auto_learning_rate[budget] if cfg.learning_rate == "auto" else cfg.learning_rate
    on_gpu = cpu_flags is None and torch.cuda.is_available()
    attention = resolve_attention(cfg.attention, dtype, on_gpu)
    has_compiler = c_compiler() is not None
    compile_layers = resolve_compile_layers(cfg.compile_layers, dtype, cfg.quantization, on_gpu, has_compiler)
    return dataclasses.replace(
        cfg,
        compute_dtype=dtype,
        attention=attention,
        max_steps=steps,
        learning_rate=rate,
        compile_layers=compile_layers,
    )


def to_prompt_completion(rows: list[dict]):
    """trl's conversational prompt/completion format: the loss then covers the completion only."""
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": prompt_messages(row["text"]), "completion": completion_messages(intent_of(row))} for row in rows]
    )


def load_training_model(base_dir: Path, cfg: TrainConfig):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": DTYPES[cfg.compute_dtype], "attn_implementation": cfg.attention}
    if cfg.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=DTYPES[cfg.compute_dtype],
        )
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    check_target_modules(model, cfg.target_modules)
    if cfg.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model


def decoder_layers(model) -> list:
    """The model's stack of decoder layers (`model.layers` in Llama-style models, `transformer.h` in GPT-2's)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h") and len(module):
            return list(module)
    return []


@contextlib.contextmanager
def compiled_decoder_layers(model, enabled: bool) -> Iterator[None]:
    """torch.compile each decoder layer inside this block (training); eager again after it.

    Regional compilation: the layers share their code, so one graph (dynamic in batch and length) serves
    all of them and compiling takes ~45 s here instead of ~400 s for the whole model, for nearly the
    same step time."""
    layers = decoder_layers(model) if enabled else []
    if enabled and not layers:
        print(
            "train: warning: no decoder layer list (model.layers) in this model: training uncompiled", file=sys.stderr
        )
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # set by nn.Module.compile: the layer's own forward runs again


def eager_decoder_layers(model):
    """Decoding runs the layers uncompiled, also mid-training (tools.learning_curve): its KV-cache shapes
    would compile other graphs for one pass over the validation rows."""
    return attributes_set(decoder_layers(model), "_compiled_call_impl", None)


@contextlib.contextmanager
def attributes_set(objects: list, name: str, value, default=None) -> Iterator[None]:
    """Each object's attribute `name` is `value` inside this block, and what it was before after it."""
    before = [getattr(item, name, default) for item in objects]
    for item in objects:
        setattr(item, name, value)
    try:
        yield
    finally:
        for item, old in zip(objects, before, strict=True):
            setattr(item, name, old)


@contextlib.contextmanager
def completion_tokens_only_scoring() -> Iterator[None]:
    """While training, make trl's fused LM head project only the labelled (completion) positions on every device.

    trl 1.16 keeps just the labelled positions on Triton devices (CUDA, XPU) but projects every position
    through the 49k-token vocabulary elsewhere, to keep tile shapes fixed for compilers such as Neuron's.
    On CPU nothing recompiles, and since 3/4 of each example is prompt that work is pure waste: here it was
    47% of the step time. The loss and its gradients are the same (a test checks). The switch is trl's
    private `_use_triton`, so it is replaced only inside this block and restored after it; if a later trl
    moves it, training stays correct and only slower, and this says so instead of failing.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not callable(original):
        print(
            "train: warning: this trl has no trl.trainer.utils._use_triton; on CPU the LM head will score prompt "
            "tokens too (same loss, slower steps)",
            file=sys.stderr,
        )
        yield
        return
    trl_utils._use_triton = lambda device: True  # only read there to choose compact scoring
    try:
        yield
    finally:
        trl_utils._use_triton = original


def lora_input_casting(model, enabled: bool):
    """Whether peft casts each LoRA layer's input to the adapter's dtype, inside this block (restored after).
    Off only under autocast, which casts for the matmul itself; a forward pass without it needs the cast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return attributes_set(layers, "cast_input_dtype_enabled", enabled, default=True)


def linear_module_names(model) -> set[str]:
    """Short names of the linear layers LoRA can target (q_proj, ...), 4-bit ones included."""
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and full_name != "lm_head":
            names.add(full_name.rsplit(".", 1)[-1])
    return names


def check_target_modules(model, target_modules: list[str]) -> None:
    available = linear_module_names(model)
    unknown = sorted(set(target_modules) - available)
    if unknown:
        raise ParamError(
            f"params.yaml: train.target_modules: {unknown} not in the model (its linear layers: {sorted(available)})"
        )


def top_layers(n_layers: int, top: int) -> list[int] | None:
    """The indices of the top `top` of `n_layers` decoder layers (None: all of them)."""
    if top == 0 or top == n_layers:
        return None
    if top > n_layers:
        raise ParamError(f"params.yaml: train.lora_top_layers: {top}, but the model has only {n_layers} layers")
    return list(range(n_layers - top, n_layers))


def lora_config(cfg: TrainConfig, n_layers: int):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=top_layers(n_layers, cfg.lora_top_layers),
        init_lora_weights=LORA_INITS[cfg.lora_init],
        bias="none",
        task_type="CAUSAL_LM",
    )


def trainer_class(cfg: TrainConfig):
    """trl's SFTTrainer, or with `loraplus_lr_ratio` > 1 one whose optimizer is peft's LoRA+ (arXiv 2402.12354):
    the same optimizer class and settings the trainer would build, with the B matrices' learning rate raised."""
    from trl import SFTTrainer

    if cfg.loraplus_lr_ratio == 1:  # always so with method full (TrainConfig refuses another ratio)
        return SFTTrainer

    class LoraPlusTrainer(SFTTrainer):
        def create_optimizer(self, model=None):
            from peft.optimizers import create_loraplus_optimizer

            if self.optimizer is None:
                opt_model = self.model if model is None else model
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
                kwargs.pop("lr", None)
                self.optimizer = create_loraplus_optimizer(
                    opt_model,
                    optimizer_cls,
                    lr=self.args.learning_rate,
                    loraplus_lr_ratio=cfg.loraplus_lr_ratio,
                    loraplus_weight_decay=self.args.weight_decay,
                    **kwargs,
                )
            return self.optimizer

    return LoraPlusTrainer


def warmup_steps(cfg: TrainConfig, train_rows: int) -> int:
    """Warm-up steps as transformers counts them for a ratio (ceil), for any ratio: transformers reads a
    float >= 1 as a step count, so passing warmup_ratio 1.0 on would warm up for one step."""
    total = cfg.max_steps
    if total <= 0:
        batches = math.ceil(train_rows / cfg.batch_size)
        total = math.ceil(cfg.epochs * max(1, batches // cfg.gradient_accumulation))
    return math.ceil(cfg.warmup_ratio * total)


def sft_config(cfg: TrainConfig, output_dir: Path, has_eval: bool, train_rows: int = 0):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=warmup_steps(cfg, train_rows),
        # trl truncates only padded batches; a packed row is bounded by the row contract (MAX_TEXT_CHARS)
        max_length=None if cfg.padding_free else cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # trl turns both on by default; on CPU they cost 45-50% of step time for nothing
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.compute_dtype == "bfloat16",  # autocast; on CPU, oneDNN runs bf16 matmuls on AMX where present
        fp16=cfg.compute_dtype == "float16" and torch.cuda.is_available(),
        completion_only_loss=True,
        neftune_noise_alpha=cfg.neftune_alpha or None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        # sdpa keeps packed examples apart: transformers builds a block-diagonal mask from the position_ids
        padding_free=cfg.padding_free,
        disable_tqdm=False,
    )


def run_id(cfg: TrainConfig, train_file: Path, base_dir: Path) -> str:
    """What a checkpoint was trained from: params (minus those that don't change the result), data, base.

    `cfg` is resolved, so `max_steps` and `learning_rate` are what this machine trains with, and
    `auto_steps` and `auto_learning_rate` (the other dtypes' values) are left out: editing another
    dtype's entry must not restart this run."""
    ignored = ("threads", "logging_steps", "launcher", "save_steps", "auto_steps", "auto_learning_rate")
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignored}
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    h.update(hashlib.sha256(train_file.read_bytes()).digest())
    for path in sorted(base_dir.glob("*.json")) + sorted(base_dir.glob("*.safetensors")):
        with path.open("rb") as f:  # contents, not mtimes: a rerun of prepare_base that gives the same model resumes
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def complete_checkpoint(folder: Path) -> bool:
    """transformers writes trainer_state.json last: a checkpoint without a readable one was cut off."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(folder.glob("adapter_model.*")) or any(folder.glob("model*.safetensors"))


def finished_run(checkpoint: Path) -> bool:
    """Whether a (complete) checkpoint was saved at the last step its run planned."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def prepare_checkpoints(checkpoint_dir: Path, run_id: str) -> Path | None:
    """The checkpoint to resume from, if the folder holds a complete one of this exact run; else it is emptied.

    Checkpoints a kill cut off mid-save are removed first: resuming from one fails for good.
    """
    marker = checkpoint_dir / "run.json"
    try:
        previous = json.loads(marker.read_text())["run_id"] if marker.exists() else None
    except (ValueError, KeyError):
        previous = None
    found = (
        [p for p in checkpoint_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
        if checkpoint_dir.exists()
        else []
    )
    checkpoints = []
    for folder in sorted(found, key=lambda p: int(p.name.split("-")[1])):
        if complete_checkpoint(folder):
            checkpoints.append(folder)
        else:
            print(f"train: removing {folder}: cut off while being saved")
            shutil.rmtree(folder, ignore_errors=True)
    if previous == run_id and checkpoints and finished_run(checkpoints[-1]):
        # a forced rerun (dvc repro -f, a kill after the last save): transformers would resume it past its
        # end (one step more, when the run spans epochs), so it trains again instead
        print(f"train: {checkpoints[-1]} ends a finished run of the same params, data and base: starting over")
    elif previous == run_id and checkpoints:
        print(f"train: resuming from {checkpoints[-1]} (same params, data and base)")
        return checkpoints[-1]
    elif checkpoints:
        print(f"train: params, data or base changed since {checkpoints[-1]}: starting over")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True)
    marker.write_text(json.dumps({"run_id": run_id}) + "\n")
    return None


def make_live_callback(live_dir: Path, resume: bool):
    """dvclive logging of loss, eval loss, token accuracy, learning rate and tokens/s."""
    from dvclive import Live
    from transformers import TrainerCallback

    class LiveCallback(TrainerCallback):
        def __init__(self):
            self.live = Live(dir=str(live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)
            self.last = None  # (time, tokens seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            now = time.perf_counter()
            self.live.step = state.global_step  # the trainer's step, also after a resume
            names = {
                "loss": "loss",
                "eval_loss": "eval_loss",
                "mean_token_accuracy": "token_accuracy",
                "eval_mean_token_accuracy": "eval_token_accuracy",
                "learning_rate": "learning_rate",
            }
            logged = False
            for key, name in names.items():
                if key in logs:
                    self.live.log_metric(name, float(logs[key]))
                    logged = True
            if "num_tokens" in logs and "loss" in logs:
                if self.last is not None and now > self.last[0]:
                    self.live.log_metric(
                        "tokens_per_second", (logs["num_tokens"] - self.last[1]) / (now - self.last[0])
                    )
                self.last = (now, logs["num_tokens"])
            if logged:
                self.live.make_summary()

        def on_train_end(self, args, state, control, **kwargs):
            self.live.end()

    return LiveCallback()


def sort_target_modules(adapter_dir: Path) -> None:
    """peft keeps target_modules as a set and saves it in the order of this process's string hashing, so
    the same training wrote another adapter_config.json each run (and reran merge): saved sorted."""
    config_file = adapter_dir / "adapter_config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_initial_adapter(model, folder: Path) -> None:
    """The adapter as pissa or olora initialised it, before any step: saving the trained one against it
    turns it into a plain adapter on the unchanged base (rank 2r), which merge and users load as any other."""
    model.peft_config["default"].init_lora_weights = True  # loading it must not decompose the weights again
    model.save_pretrained(folder)


def train(
    cfg: TrainConfig,
    base_dir: Path = BASE_DIR,
    train_file: Path = TRAIN_FILE,
    validation_file: Path | None = VALIDATION_FILE,
    adapter_dir: Path = ADAPTER_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    live_dir: Path | None = LIVE_DIR,
    callbacks=(),
) -> dict:
    """Train and save the adapter; returns a summary (steps, losses, time, throughput, memory)."""
    from transformers import AutoTokenizer

    for path, what in (
        (base_dir / "config.json", "base model (run prepare_base)"),
        (train_file, "training data (run synthesize)"),
    ):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing {what}")
    torch.set_num_threads(cfg.threads)
    cfg = resolve(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    train_rows = read_jsonl(train_file)
    eval_rows = read_jsonl(validation_file)[: cfg.eval_examples] if validation_file and validation_file.exists() else []
    model = load_training_model(base_dir, cfg)
    resume = prepare_checkpoints(checkpoint_dir, run_id(cfg, train_file, base_dir))
    start_step = int(resume.name.split("-")[1]) if resume else 0
    # dvclive logs into the checkpoint folder and replaces live_dir (tracked by git) only once training has
    # finished, so a killed run never leaves live_dir describing a run that models/adapter is not from
    live_scratch = checkpoint_dir / "dvclive"
    all_callbacks = list(callbacks) + ([make_live_callback(live_scratch, bool(resume))] if live_dir else [])
    trainer = trainer_class(cfg)(
        model=model,
        args=sft_config(cfg, checkpoint_dir, bool(eval_rows), len(train_rows)),
        train_dataset=to_prompt_completion(train_rows),
        eval_dataset=to_prompt_completion(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model.config.num_hidden_layers) if cfg.method == "lora" else None,
        callbacks=all_callbacks,
    )
    initial_adapter = None
    if cfg.lora_init != "default":  # (only with method lora: TrainConfig refuses it with full); saved again on a resume
        initial_adapter = checkpoint_dir / "initial-adapter"
        save_initial_adapter(trainer.model, initial_adapter)
    start = time.perf_counter()
    # peft casts each LoRA input to the adapter's float32 and autocast casts it straight back to bf16: two
    # copies per adapted layer and pass (12% of a profiled bf16 step, within the step bench's noise) for
    # the same numbers (a test checks)
    under_autocast = trainer.args.bf16 or trainer.args.fp16
    with (
        completion_tokens_only_scoring(),
        lora_input_casting(trainer.model, enabled=not under_autocast),
        compiled_decoder_layers(trainer.model, cfg.compile_layers),
    ):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    if trainer.is_world_process_zero():
        with atomic_dir(adapter_dir) as tmp:
            conversion = {"path_initial_model_for_weight_conversion": str(initial_adapter)} if initial_adapter else {}
            trainer.model.save_pretrained(tmp, **conversion)
            tokenizer.save_pretrained(tmp)
            sort_target_modules(Path(tmp))
        if live_dir:
            with atomic_dir(live_dir) as tmp:
                shutil.copytree(live_scratch, tmp, dirs_exist_ok=True)
    scored = validation_scores(trainer.model, base_dir, read_jsonl(validation_file) if validation_file else [], cfg)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    steps_run = trainer.state.global_step - start_step
    return {
        "steps": trainer.state.global_step,
        "steps_this_run": steps_run,
        "resumed": bool(resume),
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, steps_run), 3),
        "tokens_per_second": round(
            result.metrics.get("train_tokens_per_second", 0) or (tokens / seconds if seconds else 0), 1
        ),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "allocator": allocator_in_use(),  # tcmalloc or glibc's: the same numbers, another step time
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_vram_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "method": cfg.method,
        "quantization": cfg.quantization,
        "compute_dtype": cfg.compute_dtype,
        "step_budget": step_budget(cfg.compute_dtype),  # the auto_steps / auto_learning_rate entry of this machine
        "attention": cfg.attention,
        "compile_layers": cfg.compile_layers,
        "learning_rate": cfg.learning_rate,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        **scored,
    }


def validation_scores(model, base_dir: Path, rows: list[dict], cfg: TrainConfig) -> dict:
    """Greedy answers to the first `score_examples` validation rows, scored like every eval (free decoding).

    Validation rows are drawn like training rows (held-out slots excluded), so this measures fit, not
    generalization; it is what experiments are compared by, so that the eval sets stay unseen.
    """
    rows = rows[: cfg.score_examples]
    if not rows:
        return {}
    from ecommerce_slm.engines import TransformersEngine
    from ecommerce_slm.scoring import accuracy_summary, score_one

    start = time.perf_counter()
    # 64 at once, as the eval stages decode (merged, 300 rows: 45 s in batches of 16, 31 s in 64, the same answers)
    engine = TransformersEngine.from_loaded(model.eval(), base_dir, batch_size=64)
    # decoding runs without autocast and uncompiled, also mid-training
    with lora_input_casting(model, enabled=True), eager_decoder_layers(model):
        raw = engine.generate([prompt_messages(row["text"]) for row in rows])
    summary = accuracy_summary(rows, [score_one(text, row) for text, row in zip(raw, rows, strict=True)])
    return {
        "validation_scored": summary["n"],
        "validation_exact_match": summary["exact_match"],
        "validation_field_accuracy": summary["field_accuracy"],
        "validation_by_language": summary["by_language"],
        "validation_score_seconds": round(time.perf_counter() - start, 1),
    }


def relaunch_with_accelerate() -> int:
    """train.launcher=accelerate: rerun this module under `accelerate launch` (its config decides GPUs/nodes)."""
    env = {**os.environ, "ECOMMERCE_SLM_LAUNCHED": "1"}
    return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "-m", "stages.train"], env=env)


@stage_main("train")
def main(argv: list[str] | None = None) -> str | None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    cfg = TrainConfig.load()
    if cfg.launcher == "accelerate" and not os.environ.get("ECOMMERCE_SLM_LAUNCHED"):
        status = relaunch_with_accelerate()
        if status:
            raise SystemExit(status)
        return None
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    write_json(TRAIN_METRICS, summary)
    return (
        f"{summary['steps']} steps, loss {summary['first_loss']} -> {summary['final_loss']}, "
        f"{summary['seconds_per_step']} s/step, {summary['tokens_per_second']} tokens/s -> {ADAPTER_DIR}"
    )


if __name__ == "__main__":
    sys.exit(main())
