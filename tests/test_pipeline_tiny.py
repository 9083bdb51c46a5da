"""The whole pipeline, every stage's main through `dvc repro`, on a tiny random Llama in a project copy:
each stage writes what dvc.yaml says it writes, and a second `dvc status` finds everything up to date."""

import json
import os
import shutil

import pytest
import yaml
from conftest import BIN, ROOT

from ecommerce_slm.allocator import find_tcmalloc

pytestmark = pytest.mark.slow

TINY = {
    "data": {"n_examples": 40, "n_eval": 12},
    "train": {
        "quantization": "none",
        "compute_dtype": "float32",
        "max_steps": 4,
        "batch_size": 4,
        "save_steps": 4,
        "eval_steps": 4,
        "eval_examples": 4,
        "logging_steps": 1,
        "max_length": 128,
    },
    "gptq": {"calibration_samples": 8},
    "gguf": {"levels": ["Q8_0"], "imatrix_context": 128},
    "eval": {"limit": 6, "kl_examples": 2, "max_new_tokens": 24, "batch_size": 6, "few_shot": 2},
    "eval_api": {"models": ["gpt-4.1"]},
    "bench": {"repeats": 1, "warmup": 0, "prompts": 2, "new_tokens": 4},
    "serve": {
        "variant": "Q8_0",
        "parallel": 2,
        "load_test": {"clients": [1, 2], "requests": 4, "repeats": 1, "warmup": 0},
    },
}


def dvc(project, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    import subprocess

    return subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_wide_model_dir):
    root = tmp_path_factory.mktemp("pipeline")
    for folder in ("ecommerce_slm", "stages", "tools"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    (root / "data").mkdir()
    shutil.copy(ROOT / "data" / "handwritten.jsonl", root / "data")  # in git: the second test set
    (root / ".dvc" / "config").write_text(
        "[core]\n    no_scm = true\n    analytics = false\n    check_update = false\n"
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["model"] = str(tiny_wide_model_dir)
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(root, "repro")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return root


def test_every_stage_writes_its_outputs(project):
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for name, entry in stages.items():
        for out in entry.get("outs", []):
            assert (project / out["path"]).exists(), (name, out["path"])
    summary = json.loads((project / "metrics" / "summary.json").read_text())
    assert [r["variant"] for r in summary["variants"]] == ["merged", "gptq", "F16", "Q8_0"]
    gptq = json.loads((project / "metrics" / "eval" / "gptq.json").read_text())
    assert gptq["engine"] == "transformers" and gptq["n"] == 6  # GPTQ evaluated through transformers' loader
    handwritten = json.loads((project / "metrics" / "handwritten" / "Q8_0.json").read_text())
    assert handwritten["n"] == 6 and handwritten["data"] == "data/handwritten.jsonl"
    assert json.loads((project / "metrics" / "eval" / "api-gpt-4.1.json").read_text())["skipped"]
    trained = json.loads((project / "metrics" / "train.json").read_text())
    assert trained["steps"] == 4
    # dvc runs `python -m stages.train`, which preloads tcmalloc wherever it is installed
    assert trained["allocator"] == ("tcmalloc" if find_tcmalloc() else "system")
    assert json.loads((project / "metrics" / "variants" / "Q8_0.json").read_text())["file_type"] == "Q8_0"


def test_a_second_look_finds_everything_up_to_date(project):
    result = dvc(project, "status", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"hardware": ["always changed"]}, result.stdout
