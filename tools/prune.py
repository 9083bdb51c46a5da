"""Drop what stages no longer in dvc.yaml left behind: their dvc.lock entries and their outputs.

    python -m tools.prune             # `make run` does this before `dvc repro`
    python -m tools.prune --dry-run

DVC keeps the lock entry and the files of a matrix stage whose item was removed (say Q3_K_M from
gguf.levels), so later eval/report stages would still find them. This removes both, and the temporary
files and folders of stages killed mid-write (`.NAME.pidN.xxxx.tmp` whose process N is gone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import atomic_write_text, remove, stale_temporaries


def current_stage_names(root: Path) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name for stage in repo.index.stages}


def stale_entries(lock: dict, current: set[str]) -> dict[str, list[str]]:
    """Lock entries whose stage is gone, with the outputs only they declare."""
    stages = lock.get("stages", {})
    kept_outs = {out["path"] for name, entry in stages.items() if name in current for out in entry.get("outs", [])}
    return {
        name: [out["path"] for out in entry.get("outs", []) if out["path"] not in kept_outs]
        for name, entry in stages.items()
        if name not in current
    }


OUTPUT_FOLDERS = (
    "models",
    "models/gguf",
    "models/checkpoints",
    "data",
    "metrics",
    "metrics/eval",
    "metrics/bench",
    "metrics/variants",
    "metrics/pareto",
    "reports",
    "dvclive",
)


def leftover_temporaries(root: Path) -> list[Path]:
    """Temporary outputs of stages that were killed mid-write (their writing process is gone)."""
    return [p for folder in OUTPUT_FOLDERS for p in stale_temporaries(root / folder)]


def prune(root: Path = Path("."), dry_run: bool = False) -> dict[str, list[str]]:
    """Drop stale lock entries with their outputs, and temporaries left by killed stages (under 'temporaries')."""
    leftovers = leftover_temporaries(root)
    if not dry_run:
        for path in leftovers:
            remove(path)
    lock_file = root / "dvc.lock"
    if not lock_file.exists():
        return {"temporaries": [str(p.relative_to(root)) for p in leftovers]} if leftovers else {}
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    stale = stale_entries(lock, current_stage_names(root))
    if stale and not dry_run:
        for outs in stale.values():
            for out in outs:
                remove(root / out)
        for name in stale:
            del lock["stages"][name]
        atomic_write_text(lock_file, yaml.safe_dump(lock, sort_keys=False, allow_unicode=True))
    if leftovers:
        stale["temporaries"] = [str(p.relative_to(root)) for p in leftovers]
    return stale


@stage_main("prune")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = parser.parse_args(argv)
    stale = prune(dry_run=args.dry_run)
    return "\n".join(
        f"prune: {'would drop' if args.dry_run else 'dropped'} {name} ({', '.join(outs) or 'no outputs'})"
        for name, outs in stale.items()
    ).removeprefix("prune: ")


if __name__ == "__main__":
    sys.exit(main())
