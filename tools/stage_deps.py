"""What each dvc.yaml stage really depends on, read from its code, against what dvc.yaml declares.

    python -m tools.stage_deps            # lists every missing dep or params section; exit 1 if any

For each stage (foreach/matrix expanded, through DVC's own index): the module its cmd runs
(`python -m stages.NAME`), every project module that one imports, transitively, function-level imports
and what each package's `__init__` imports included (read with ast, nothing is imported), the resource
files those modules read (ecommerce_slm.paths.RESOURCES_READ) and the params sections whose dataclasses
they load (`X.load()`, `${section.catalog}` for a config with a catalog field). A DVC cache is only as
right as deps: a file missing here means `dvc repro` calls stale results up to date. tests/test_stage_deps.py runs this.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("ecommerce_slm", "stages", "tools")
STAGE_COMMAND = re.compile(r"python -m (stages\.\w+)")


@dataclass
class StageNeeds:
    module: str
    files: set[str] = field(default_factory=set)  # project files: modules and resources
    sections: set[str] = field(default_factory=set)  # params.yaml sections loaded
    catalog_params: set[str] = field(default_factory=set)  # ${section.catalog} the deps must name


_parsed: dict[tuple[Path, int, int], ast.AST] = {}


def parse(path: Path) -> ast.AST:
    """A file's syntax tree, parsed once per content version (every stage reads the same library files)."""
    stat = path.stat()
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size)
    if key not in _parsed:
        _parsed[key] = ast.parse(path.read_text(encoding="utf-8"))
    return _parsed[key]


def module_file(module: str, root: Path = ROOT) -> Path | None:
    path = root / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST) -> set[str]:
    """Project modules a module imports anywhere in its body (`from ecommerce_slm.x import y` -> ecommerce_slm.x,
    and ecommerce_slm.x.y where y is itself a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES and module_file(m)}


def section_classes(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    """Class name -> (params section, has a catalog field) for every `SECTION = "..."` dataclass in the project."""
    out = {}
    for package in PROJECT_PACKAGES:
        for path in (root / package).glob("*.py"):
            for node in ast.walk(parse(path)):
                if not isinstance(node, ast.ClassDef):
                    continue
                section, catalog = None, False
                for stmt in node.body:
                    target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
                    if isinstance(target, ast.Name) and target.id == "SECTION" and isinstance(stmt.value, ast.Constant):
                        section = stmt.value.value
                    elif isinstance(target, ast.Name) and target.id == "catalog":
                        catalog = True
                if section:
                    out[node.name] = (section, catalog)
    return out


def resources_used(tree: ast.AST) -> set[str]:
    """Resource files a module reads through the ecommerce_slm.paths constants it uses."""
    from ecommerce_slm import paths

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ecommerce_slm.paths":
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "paths":
            names.add(node.attr)
    files = {paths.RESOURCES_READ[n] for n in names if n in paths.RESOURCES_READ}
    return {str(f.resolve().relative_to(ROOT)) if f.is_absolute() else str(f) for f in files}


def sections_loaded(tree: ast.AST, classes: dict[str, tuple[str, bool]]) -> tuple[set[str], set[str]]:
    sections, catalogs = set(), set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in classes
        ):
            section, has_catalog = classes[node.func.value.id]
            sections.add(section)
            if has_catalog:
                catalogs.add(f"${{{section}.catalog}}")
    return sections, catalogs


def stage_needs(module: str, root: Path = ROOT, classes: dict[str, tuple[str, bool]] | None = None) -> StageNeeds:
    classes = section_classes(root) if classes is None else classes
    needs, todo, seen = StageNeeds(module), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        tree = parse(path)
        needs.files.add(str(path.relative_to(root)))
        needs.files |= resources_used(tree)
        sections, catalogs = sections_loaded(tree, classes)
        needs.sections |= sections
        needs.catalog_params |= catalogs
        todo += sorted(imported_modules(tree) - seen)
        # a package's __init__ runs before any of its modules, and what it imports runs too
        # (stages/__init__.py chooses the allocator for every stage): it is walked like a module
        package = name.split(".")[0]
        if package not in seen and module_file(package, root):
            todo.append(package)
    return needs


def declared_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage DVC sees (foreach/matrix expanded): name -> {cmd, deps (as written), params (as written)}."""
    import yaml
    from dvc.repo import Repo

    raw = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    with Repo(str(root)) as repo:
        stages = {}
        for stage in repo.index.stages:
            definition = raw[stage.name.split("@")[0]]
            definition = definition.get("do", definition)
            params = []
            for entry in definition.get("params", []):
                params += list(entry) if isinstance(entry, dict) else [entry]
            stages[stage.name] = {
                "cmd": stage.cmd,
                "deps": {str(d.def_path) for d in stage.deps},
                "written_deps": set(map(str, definition.get("deps", []))),
                "params": params,
            }
    return stages


def problems(root: Path = ROOT) -> list[str]:
    """One line per missing dep or params section, naming the stage and what it lacks."""
    out, needs_of, classes = [], {}, section_classes(root)  # a matrix stage's items share one module
    for name, stage in sorted(declared_stages(root).items()):
        match = STAGE_COMMAND.search(stage["cmd"])
        if not match:
            out.append(f"{name}: cmd {stage['cmd']!r} does not run `python -m stages.<module>`")
            continue
        if match[1] != f"stages.{name.split('@')[0]}":
            out.append(f"{name}: runs {match[1]}, not the module named as the stage (stages.{name.split('@')[0]})")
        if module_file(match[1], root) is None:
            out.append(f"{name}: {match[1]} does not exist")
            continue
        if match[1] not in needs_of:
            needs_of[match[1]] = stage_needs(match[1], root, classes)
        needs = needs_of[match[1]]
        for missing in sorted(needs.files - stage["deps"]):
            out.append(f"{name}: deps lack {missing}")
        for missing in sorted(needs.catalog_params - stage["written_deps"]):
            out.append(f"{name}: deps lack {missing} (its config reads a catalog file)")
        for section in sorted(needs.sections):
            if not any(p == section or p.startswith(f"{section}.") for p in stage["params"]):
                out.append(f"{name}: params lack the section '{section}' (its code loads {section})")
    return out


@stage_main("stage_deps")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    found = problems()
    if found:
        raise ProjectError("dvc.yaml is missing what stages read:\n  " + "\n  ".join(found))
    return "every stage declares the code, resources and params it reads"


if __name__ == "__main__":
    sys.exit(main())
