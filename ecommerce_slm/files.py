"""Reading data rows and writing outputs atomically (a killed stage never leaves half a file).

Temporary files and folders carry the writer's process id (`.NAME.pid123.xxxx.tmp`): the next write of
the same output, and `make prune`, remove the ones whose writer is dead (a stage killed with SIGKILL).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ecommerce_slm.cli import ProjectError

_WRITER = re.compile(r"\.pid(\d+)\.\w+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Temporary outputs in `folder` (of output `name`) whose writing process is gone."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob(f".{name}.pid*.tmp") if (m := _WRITER.search(p.name)) and not _alive(int(m[1]))
    )


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temp_prefix(path: Path) -> str:
    for stale in stale_temporaries(path.parent, path.name):  # left by a killed earlier writer
        remove(stale)
    return f".{path.name}.pid{os.getpid()}."


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path`, on failure it vanishes.

    Readers so never see half a file, whether the writer is this process or a child (converter, quantizer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the mode open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [row for _, row in iter_rows(path)]


class RowFormatError(ProjectError, ValueError):
    pass


def iter_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) from a JSONL or CSV file or a `datasets.save_to_disk` folder.

    location is `file:line` (or `folder:row N`), for error messages that point at the bad row.
    """
    path = Path(path)
    if path.is_dir():
        yield from _iter_hf_folder(path)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        for line_no, line in enumerate(_utf8_text(path).split("\n"), 1):  # not splitlines: U+2028 is text
            if not line.strip():
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except json.JSONDecodeError as err:
                raise RowFormatError(f"{path}:{line_no}: row: expected one JSON object per line ({err.msg})") from None
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_utf8_text(path), newline=""))
        for row in reader:
            # line_num counts physical lines (header = 1), so quoted newlines keep it right
            yield f"{path}:{reader.line_num}", row
    else:
        raise RowFormatError(
            f"{path}: expected a .jsonl, .csv file or a datasets folder, got '{suffix or 'no extension'}'"
        )


def _utf8_text(path: Path) -> str:
    """The file as text, without a byte-order mark (Excel writes one); bad bytes are named by line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise RowFormatError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); save the file as UTF-8"
        ) from None


def _iter_hf_folder(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise RowFormatError(f"{path}: expected a folder written by datasets' save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise RowFormatError(f"{path}: a DatasetDict needs a 'train' split, has {list(ds)}")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{path}:row {i + 1}", row


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside out_dir; on success it replaces out_dir, on failure it vanishes.

    A killed stage so never leaves a half-written model where the next stage would read it.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=_temp_prefix(out_dir), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; give it the mode mkdir would
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
