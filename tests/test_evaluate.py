import json

from stages.evaluate import main

from conftest import ROOT


def test_cli_writes_metrics_and_errors(tiny_model_dir, tmp_path):
    data = tmp_path / "mine.jsonl"
    rows = [{"text": "add 2 shampoos", "action": "add", "product": "Shampoo", "quantity": 2, "language": "en"},
            {"text": "makni ruksak", "action": "remove", "product": "Backpack", "quantity": 1}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "metrics" / "mine.json"
    assert main(["--model", str(tiny_model_dir), "--data", str(data), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and metrics["exact_match"] == 0.0  # a random model gets nothing right
    assert set(metrics["by_language"]) == {"en", "unknown"}
    errors = [json.loads(line) for line in (tmp_path / "metrics" / "mine.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 2 and errors[0]["expected"] == {"action": "add", "product": "Shampoo", "quantity": 2}


def test_cli_rejects_a_non_model_folder(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--data", str(ROOT / "README.md"), "--out", str(tmp_path / "m.json")]) == 1
    assert "not a model folder" in capsys.readouterr().err
