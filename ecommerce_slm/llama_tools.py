"""llama.cpp's own programs, and a llama-server that lives exactly as long as the code that started it.

`make install` builds llama-server, llama-quantize, llama-imatrix, llama-perplexity and llama-bench from
the llama.cpp source vendored in the llama-cpp-python sdist it compiles the binding from, with the same
CMake args (same instruction sets, never AMX), into the venv's bin/. So the binding and the programs are
one llama.cpp, and a GGUF file means the same thing to both.

    with LlamaServer("models/gguf/Q4_K_M.gguf", threads=2, parallel=8) as server:
        server.url       # http://127.0.0.1:PORT (loopback only, a free port), ready to answer

The server is stopped on every way out of the `with` (errors and Ctrl-C included), and the kernel
stops it if this process dies first (PR_SET_PDEATHSIG), so no server outlives a stage or a test.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ecommerce_slm.cli import ProjectError
from ecommerce_slm.processes import ends_with_this_process

TOOLS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench")
LOOPBACK = "127.0.0.1"
# Flash attention in every llama.cpp engine, the programs and the binding alike. It is llama.cpp's own default
# (`auto`: on for the CPU) but not the binding's, so it is spelled out for all of them. On 2 cores it makes
# llama-server's eval 20% faster and the binding's 9%; on the tuned Q4_K_M it moved 2 of 300 greedy answers
# of the binding (docs/measurements.md, issue 15).
FLASH_ATTENTION = True
FLASH_ATTENTION_FLAG = ["--flash-attn", "on" if FLASH_ATTENTION else "off"]


def load_binding(model: str | Path, threads: int, n_ctx: int = 2048, **options):
    """llama-cpp-python's model on `model` with what every binding engine shares (threads, flash attention)."""
    import llama_cpp

    return llama_cpp.Llama(
        str(model),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=FLASH_ATTENTION,
        verbose=False,
        **options,
    )


class LlamaToolError(ProjectError, RuntimeError):
    pass


def tool(name: str) -> str:
    """The path of one llama.cpp program: the venv's own build first, then PATH."""
    if name not in TOOLS:
        raise LlamaToolError(f"{name}: not one of the llama.cpp programs this project builds ({', '.join(TOOLS)})")
    own = Path(sys.prefix) / "bin" / name
    found = str(own) if own.is_file() else shutil.which(name)
    if not found:
        raise LlamaToolError(
            f"{name}: not in {own.parent} nor on PATH; `make install` builds it from the llama-cpp-python sdist"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class LlamaServer:
    """llama-server on 127.0.0.1 with `parallel` slots and continuous batching; a context manager."""

    def __init__(
        self,
        model: str | Path,
        threads: int = 2,
        parallel: int = 8,
        context_per_slot: int = 1024,
        extra_args: list[str] | None = None,
        port: int = 0,
        ready_timeout: float = 120.0,
    ):
        if not Path(model).is_file():
            raise LlamaToolError(f"{model}: no such GGUF file")
        self.model, self.threads, self.parallel = str(model), threads, parallel
        self.context_per_slot, self.extra_args = context_per_slot, list(extra_args or [])
        self.port, self.ready_timeout = port, ready_timeout
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [
            tool("llama-server"),
            "--model", self.model,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
            "--parallel", str(self.parallel),
            "--cont-batching",
            # a KV buffer per slot, no RAM prompt cache: with one shared buffer a sequence's answer depends
            # more on what else is in flight (24 vs 43 of 50 untuned raw answers equal the binding's), and
            # saving idle slots to the RAM cache at each new request costs more than it saves here
            "--no-kv-unified",
            "--cache-ram", "0",
            "--ctx-size", str(self.context_per_slot * self.parallel),
            "--no-webui",
            *FLASH_ATTENTION_FLAG,
            "--poll", "0",  # idle threads sleep: the clients share these 2 cores (+10% requests/s here)
            "--seed", "0",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> LlamaServer:
        self.port = self.port or free_port()
        self._log = tempfile.TemporaryFile(mode="w+b")  # read back only to explain a failed start
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=ends_with_this_process(signal.SIGTERM),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LlamaToolError(
                    f"llama-server on {self.model} exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # 503 while the model loads, refused before the socket is open
            time.sleep(0.1)
        raise LlamaToolError(
            f"llama-server on {self.model}: not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return "\n".join(self._log.read().decode("utf-8", "replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def llama_bench(model: str | Path, prompt_tokens: int, new_tokens: int, threads: int, repeats: int) -> dict:
    """llama.cpp's own llama-bench on one file: prompt (pp) and generation (tg) tokens/s, mean and stddev."""
    done = subprocess.run(
        [
            tool("llama-bench"),
            "--model",
            str(model),
            "--n-prompt",
            str(prompt_tokens),
            "--n-gen",
            str(new_tokens),
            "--threads",
            str(threads),
            "--repetitions",
            str(repeats),
            "--output",
            "json",
            *FLASH_ATTENTION_FLAG,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        errors="replace",
        preexec_fn=ends_with_this_process(),
    )
    try:
        tests = json.loads(done.stdout)
    except json.JSONDecodeError:
        tests = None
    if done.returncode != 0 or not isinstance(tests, list):
        raise LlamaToolError(
            f"llama-bench on {model} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-1500:]}"
        )
    out = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "threads": threads, "repetitions": repeats}
    for test in tests:
        kind = "prompt" if test["n_gen"] == 0 else "generation"
        out[f"{kind}_tokens_per_s"] = round(test["avg_ts"], 1)
        out[f"{kind}_stddev"] = round(test["stddev_ts"], 1)
    return out


def _number(pattern: str, log: str) -> float | None:
    found = re.search(pattern, log)
    return float(found[1]) if found else None


def _run_perplexity(arguments: list[str], what: str) -> str:
    done = subprocess.run(
        [tool("llama-perplexity"), *arguments, *FLASH_ATTENTION_FLAG],
        capture_output=True,
        text=True,
        errors="replace",
        preexec_fn=ends_with_this_process(),
    )
    if done.returncode != 0:
        raise LlamaToolError(
            f"llama-perplexity {what} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-1500:]}"
        )
    return done.stdout + done.stderr


def perplexity_base(reference: str | Path, text: str, context: int, threads: int, base_file: str | Path) -> None:
    """Save `reference`'s log-probabilities over `text` (--kl-divergence-base): what perplexity_kl_from_base
    compares a model with, over the second half of each `context`-token chunk. The text's tokens go with them."""
    with tempfile.TemporaryDirectory(prefix="kld-") as scratch:
        text_file = Path(scratch, "text.txt")
        text_file.write_text(text, encoding="utf-8")
        arguments = ["--model", str(reference), "--file", str(text_file), "--kl-divergence-base", str(base_file)]
        _run_perplexity([*arguments, "--ctx-size", str(context), "--threads", str(threads)], f"--model {reference}")


def perplexity_kl_from_base(model: str | Path, base_file: str | Path, context: int, threads: int) -> dict:
    """llama-perplexity's KL divergence of `model` from the saved reference, and how often the top token agrees."""
    arguments = ["--model", str(model), "--kl-divergence-base", str(base_file), "--kl-divergence"]
    log = _run_perplexity([*arguments, "--ctx-size", str(context), "--threads", str(threads)], f"--model {model}")
    same_top = _number(r"Same top p:\s+([\d.]+)", log)
    return {
        "mean_kl": _number(r"Mean\s+KLD:\s+([-\d.e+]+)", log),
        "median_kl": _number(r"Median\s+KLD:\s+([-\d.e+]+)", log),
        "same_top_token": None if same_top is None else round(same_top / 100, 5),  # printed as a percentage
        "ppl_ratio": _number(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([-\d.e+]+)", log),
        "context": context,
        "threads": threads,
    }


def perplexity_kl(reference: str | Path, model: str | Path, text: str, context: int, threads: int) -> dict:
    """llama-perplexity's KL divergence of `model` from `reference` on `text`: both runs, the base in a scratch file."""
    with tempfile.TemporaryDirectory(prefix="kld-") as scratch:
        base = Path(scratch, "reference.kld")
        perplexity_base(reference, text, context, threads, base)
        return {"reference": str(reference), **perplexity_kl_from_base(model, base, context, threads)}
