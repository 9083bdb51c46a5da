"""Which processes run on tcmalloc: the model-making stages started with `python -m`, once, unless told not to."""

import os
import subprocess
import sys

import pytest

from ecommerce_slm.allocator import CHOICE, find_tcmalloc, in_use, preload_environment

LIB = "libtcmalloc_minimal.so.4"


def python_m(module: str) -> list[str]:
    return ["/venv/bin/python", "-m", module]


def test_a_model_making_stage_is_executed_again_with_tcmalloc_first():
    env = preload_environment(python_m("stages.train"), {"PATH": "/bin", "LD_PRELOAD": "libother.so"}, LIB)
    assert env == {"PATH": "/bin", "LD_PRELOAD": f"{LIB} libother.so"}
    assert preload_environment(python_m("tools.train_step_bench"), {}, LIB) == {"LD_PRELOAD": LIB}
    with_flags = ["/venv/bin/python", "-X", "dev", "-m", "stages.merge", "--help"]
    assert preload_environment(with_flags, {}, LIB) == {"LD_PRELOAD": LIB}


@pytest.mark.parametrize(
    ("argv", "environ", "library"),
    [
        (python_m("stages.eval"), {}, LIB),  # measures speed: keeps the user's allocator
        (python_m("stages.bench"), {}, LIB),
        (["/venv/bin/pytest", "tests"], {}, LIB),  # not `python -m`
        (["/venv/bin/python", "-c", "import stages.train"], {}, LIB),
        (python_m("stages.train"), {CHOICE: "system"}, LIB),  # chosen off
        (python_m("stages.train"), {"LD_PRELOAD": LIB}, LIB),  # already on it: never twice
        (python_m("stages.train"), {}, None),  # not installed
    ],
)
def test_everything_else_goes_on_as_is(argv, environ, library):
    assert preload_environment(argv, environ, library) is None


def test_a_bad_choice_is_refused():
    with pytest.raises(SystemExit, match="ECOMMERCE_SLM_ALLOCATOR='jemalloc': expected auto, tcmalloc or system"):
        preload_environment(python_m("stages.train"), {CHOICE: "jemalloc"}, LIB)


def test_asking_for_tcmalloc_where_it_is_missing_is_an_error_not_a_note():
    with pytest.raises(SystemExit, match="ECOMMERCE_SLM_ALLOCATOR=tcmalloc: libtcmalloc_minimal is not installed"):
        preload_environment(python_m("stages.train"), {CHOICE: "tcmalloc"}, None)
    assert preload_environment(python_m("stages.train"), {CHOICE: "tcmalloc"}, LIB) == {
        CHOICE: "tcmalloc",
        "LD_PRELOAD": LIB,
    }
    assert preload_environment(python_m("stages.eval"), {CHOICE: "tcmalloc"}, None) is None  # not a model maker


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc not installed (make install installs it on Debian)")
def test_a_preloaded_process_knows_it_runs_on_tcmalloc():
    """What metrics/train.json records (test_pipeline_tiny checks a real `python -m stages.train` run)."""
    assert in_use() == "system"
    script = "from ecommerce_slm.allocator import in_use; print(in_use())"
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "LD_PRELOAD": find_tcmalloc()},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "tcmalloc"
