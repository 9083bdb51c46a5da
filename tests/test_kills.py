"""SIGKILL in the middle of a stage: the rerun completes, equals an uninterrupted run, and leaves nothing behind.

Each stage runs as `python -m stages.NAME` in a small project folder of its own (a tiny random Llama as
the base model), killed with SIGKILL at a point where it has written something, then run again.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT

from ecommerce_slm.files import stale_temporaries
from stages.train import complete_checkpoint, prepare_checkpoints
from tools.prune import prune
from tools.tiny_llama import save_tiny_llama

pytestmark = pytest.mark.slow

ROWS = [
    {"text": f"please add {n} {item}", "action": "add", "product": product, "quantity": n, "language": "en"}
    for n in range(1, 9)
    for item, product in (("shampoos", "Shampoo"), ("lip balms", "Lip Balm"))
]
TRAIN = {
    "quantization": "none",
    "compute_dtype": "float32",
    "lora_r": 8,
    "lora_alpha": 16,
    "max_steps": 8,
    "batch_size": 4,
    "learning_rate": 0.003,
    "warmup_ratio": 0.0,
    "scheduler": "constant",
    "save_steps": 2,
    "eval_steps": 4,  # the validation file is evaluated mid-run
    "eval_examples": 8,
    "logging_steps": 1,
    "max_length": 128,
    "loraplus_lr_ratio": 4,  # the default's LoRA+ optimizer: its state must resume as well
}


def project(folder: Path, tokenizer) -> Path:
    """params.yaml with a tiny training run, models/base (tiny Llama), data/train.jsonl and validation."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(TRAIN)
    (folder / "data").mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("train", "validation"):
        (folder / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    save_tiny_llama(folder / "models" / "base", tokenizer)
    return folder


def start(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(folder: Path, *args: str) -> str:
    proc = start(folder, *args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as ready() holds (polled every 20 ms); fail if it ended first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"ended before the kill point:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "models" / "adapter" / "adapter_model.safetensors")


def no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


def test_train_killed_between_steps_resumes_to_the_same_adapter(tmp_path, real_tokenizer):
    killed = project(tmp_path / "killed", real_tokenizer)
    previous_live = killed / "dvclive" / "train" / "metrics.json"  # git-tracked: the last finished run's curves
    previous_live.parent.mkdir(parents=True)
    previous_live.write_text('{"step": 279, "loss": 0.02}')
    checkpoint = killed / "models" / "checkpoints" / "train" / "checkpoint-4"
    proc = start(killed, "stages.train")
    kill_when(proc, lambda: complete_checkpoint(checkpoint))
    assert not (killed / "models" / "adapter").exists()  # nothing claimed done ...
    assert previous_live.read_text() == '{"step": 279, "loss": 0.02}'  # ... and the last run's curves untouched
    assert "resuming from" in finish(killed, "stages.train")

    straight = project(tmp_path / "straight", real_tokenizer)
    finish(straight, "stages.train")
    ours, reference = adapter_weights(killed), adapter_weights(straight)
    assert ours.keys() == reference.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-5)
    assert json.loads((killed / "metrics" / "train.json").read_text())["steps"] == 8
    assert json.loads(previous_live.read_text())["step"] == 8
    assert no_temporaries(killed) == []


def test_a_checkpoint_cut_off_while_saving_is_removed_not_resumed(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    for step, complete in ((2, True), (4, False)):
        ckpt = folder / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"")
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    (folder / "run.json").write_text(json.dumps({"run_id": "same"}))
    assert prepare_checkpoints(folder, "same") == folder / "checkpoint-2"
    assert not (folder / "checkpoint-4").exists()
    assert "cut off while being saved" in capsys.readouterr().out


def processes_in(folder: Path) -> list[int]:
    """Processes working in `folder`: the converter, or a child forked by the stage but not yet the converter."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "cwd").resolve() == folder.resolve():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_convert_killed_mid_write_takes_its_converter_along_and_reruns_clean(tmp_path, real_tokenizer):
    folder = tmp_path / "convert"
    save_tiny_llama(folder / "models" / "merged", real_tokenizer, hidden_size=256, intermediate_size=512)
    gguf_dir = folder / "models" / "gguf"
    proc = start(folder, "stages.convert_gguf")
    kill_when(proc, lambda: any(gguf_dir.glob(".F16.gguf.pid*.tmp")))
    deadline = time.time() + 10
    while processes_in(folder) and time.time() < deadline:  # the kernel kills it with its parent
        time.sleep(0.1)
    assert processes_in(folder) == []
    assert stale_temporaries(gguf_dir) != []  # what the kill left ...
    finish(folder, "stages.convert_gguf")
    assert (gguf_dir / "F16.gguf").stat().st_size > 0
    assert no_temporaries(folder) == []  # ... the rerun removed


@pytest.mark.parametrize("output", ["models/gguf/.Q8_0.gguf", "models/.merged", "metrics/.train.json"])
def test_prune_removes_what_killed_writers_left(tmp_path, output):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"{output}.pid{int(dead.stdout)}.abcd.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.mkdir() if "merged" in output else leftover.write_bytes(b"half")
    alive = tmp_path / f"{output}.pid{os.getpid()}.efgh.tmp"  # a writer still at work: kept
    alive.write_bytes(b"busy")
    assert prune(tmp_path)["temporaries"] == [str(leftover.relative_to(tmp_path))]
    assert not leftover.exists() and alive.exists()
