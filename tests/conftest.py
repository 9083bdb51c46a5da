import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dvc, and `python` for stage commands

# No test may reach a hub; everything they load is built here or ships in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def catalog():
    from stages.catalog import load_catalog

    return load_catalog(ROOT / "stages/resources/catalog.yaml", ["en", "hr", "es"])


@pytest.fixture(scope="session")
def templates():
    from stages.generator import load_templates

    return load_templates()


@pytest.fixture(scope="session")
def vocab():
    from stages.noise import NoiseVocab

    return NoiseVocab.load()


def run_cli(args, cwd=ROOT, env=None, check=True):
    """Run a command with the venv first on PATH, as `make` does."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def real_tokenizer():
    """SmolLM2's real tokenizer and chat template, read from the embedded GGUF (no hub needed)."""
    from transformers import AutoTokenizer

    from stages.prepare_base import resolve_source

    source = resolve_source("embedded:SmolLM2-135M-Instruct")
    return AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_tokenizer):
    """A tiny random LlamaForCausalLM with the real tokenizer, saved as a local model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(real_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=real_tokenizer.bos_token_id, eos_token_id=real_tokenizer.eos_token_id,
                         pad_token_id=real_tokenizer.pad_token_id, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    real_tokenizer.save_pretrained(folder)
    return folder
