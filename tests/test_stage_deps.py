"""dvc.yaml's deps cannot go stale: every stage declares the code, resources and params its module reads.

Also the layout rules that make that checkable: one module per stage, named as the stage; a stage never
imports another stage; the library never imports a stage or a tool.
"""

import ast
import shutil

import pytest
import yaml
from conftest import ROOT

from tools.stage_deps import imported_modules, problems, stage_needs

STAGE_NAMES = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def test_every_stage_declares_what_it_reads():
    assert problems(ROOT) == []


@pytest.fixture
def project_copy(tmp_path):
    """The project's code and pipeline definition in a DVC repo of its own (no git), to break on purpose."""
    for folder in ("ecommerce_slm", "stages", "tools"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    analytics = false\n")
    assert problems(tmp_path) == []
    return tmp_path


def drop_line(path, line, after=""):
    """Remove the first `line` that follows the line containing `after`."""
    text = path.read_text()
    start = text.index(after) if after else 0
    at = text.index(line, start)
    path.write_text(text[:at] + text[at + len(line) :])


def test_a_removed_code_dep_is_named_with_its_stage(project_copy):
    drop_line(project_copy / "dvc.yaml", "      - ecommerce_slm/scoring.py\n", after="  eval_gguf:")
    found = problems(project_copy)
    assert "eval_gguf@Q4_K_M: deps lack ecommerce_slm/scoring.py" in found
    assert not any(p.startswith("eval@") for p in found)  # the other eval stages still list it


def test_a_removed_resource_dep_is_named(project_copy):
    drop_line(project_copy / "dvc.yaml", "      - ecommerce_slm/resources/slots.yaml\n", after="  synthesize:")
    assert problems(project_copy) == ["synthesize: deps lack ecommerce_slm/resources/slots.yaml"]


def test_a_removed_catalog_and_params_section_are_named(project_copy):
    drop_line(project_copy / "dvc.yaml", "      - ${eval.catalog}\n", after="  eval_api:")
    drop_line(project_copy / "dvc.yaml", "      - eval_api\n", after="  eval_api:")
    found = problems(project_copy)
    assert any(p.startswith("eval_api@gpt-4.1: deps lack ${eval.catalog}") for p in found), found
    assert "eval_api@gpt-4.1: params lack the section 'eval_api' (its code loads eval_api)" in found


def test_a_new_import_in_a_library_module_reaches_every_stage_that_uses_it(project_copy):
    scoring = project_copy / "ecommerce_slm" / "scoring.py"
    scoring.write_text(
        scoring.read_text().replace(
            "from ecommerce_slm.task import",
            "from ecommerce_slm.pareto import Point  # noqa: F401\nfrom ecommerce_slm.task import",
        )
    )
    found = problems(project_copy)
    assert "eval@merged: deps lack ecommerce_slm/pareto.py" in found
    assert "eval_api@gpt-4.1: deps lack ecommerce_slm/pareto.py" in found


def test_stages_folder_holds_exactly_one_module_per_stage():
    modules = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    assert modules == STAGE_NAMES


def module_imports(path):
    return imported_modules(ast.parse(path.read_text()))


@pytest.mark.parametrize("name", sorted(STAGE_NAMES))
def test_a_stage_never_imports_another_stage(name):
    imported = {m for m in module_imports(ROOT / "stages" / f"{name}.py") if m.startswith("stages.")}
    assert imported <= {"stages"}, f"stages/{name}.py imports {imported}"


def test_the_library_imports_no_stage_and_no_tool():
    for path in (ROOT / "ecommerce_slm").glob("*.py"):
        bad = {m for m in module_imports(path) if m.split(".")[0] in ("stages", "tools")}
        assert not bad, f"{path.name} imports {bad}"


def test_the_closure_follows_function_level_imports(tmp_path):
    needs = stage_needs("stages.report", ROOT)
    assert "ecommerce_slm/pareto.py" in needs.files and ".dvc/plots/pareto.json" in needs.files
    assert needs.sections == {"report", "gguf"}


def test_the_closure_follows_what_a_package_init_imports():
    """stages/__init__.py chooses the allocator before any stage module runs: every stage reads allocator.py."""
    needs = stage_needs("stages.eval", ROOT)
    assert {"stages/__init__.py", "ecommerce_slm/allocator.py", "ecommerce_slm/__init__.py"} <= needs.files
