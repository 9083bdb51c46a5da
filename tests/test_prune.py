"""Removing an item from a matrix leaves no stale lock entry or output behind."""

import pytest
from conftest import run_cli

from tools.prune import prune, stale_entries

DVC_YAML = """stages:
  q:
    matrix:
      level: ${levels}
    cmd: python -c "import sys; open('out_' + sys.argv[1] + '.txt', 'w').write('x')" ${item.level}
    outs:
      - out_${item.level}.txt
"""


def test_stale_entries_keep_outputs_still_declared():
    lock = {"stages": {"a": {"outs": [{"path": "x"}, {"path": "shared"}]}, "b": {"outs": [{"path": "shared"}]}}}
    assert stale_entries(lock, {"b"}) == {"a": ["x"]}
    assert stale_entries(lock, {"a", "b"}) == {}


@pytest.mark.slow
def test_removed_level_is_pruned(tmp_path):
    run_cli(["git", "init", "-q"], cwd=tmp_path)
    run_cli(["dvc", "init", "-q"], cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("levels: [a, b, c]\n")
    run_cli(["dvc", "repro", "-q"], cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("levels: [a, b]\n")
    run_cli(["dvc", "repro", "-q"], cwd=tmp_path)
    assert "q@c" in (tmp_path / "dvc.lock").read_text()  # what DVC leaves behind on its own

    assert prune(tmp_path, dry_run=True) == {"q@c": ["out_c.txt"]} and (tmp_path / "out_c.txt").exists()
    assert prune(tmp_path) == {"q@c": ["out_c.txt"]}
    assert "q@c" not in (tmp_path / "dvc.lock").read_text() and not (tmp_path / "out_c.txt").exists()
    assert (tmp_path / "out_a.txt").exists()
    assert "up to date" in run_cli(["dvc", "status"], cwd=tmp_path).stdout
    assert prune(tmp_path) == {}
