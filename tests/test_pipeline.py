"""The DVC project itself: a valid DAG, params each stage declares, and a config that phones nowhere."""

import configparser

import yaml

from conftest import ROOT, run_cli

EXPECTED_STAGES = {"prepare_base", "synthesize"}


def test_dag_is_valid_and_has_the_stages():
    out = run_cli(["dvc", "dag", "--md"]).stdout
    for stage in EXPECTED_STAGES:
        assert stage in out


def test_repro_dry_run_succeeds():
    result = run_cli(["dvc", "repro", "--dry"])
    assert "ERROR" not in result.stderr


def test_each_stage_declares_the_params_section_it_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) >= EXPECTED_STAGES
    assert stages["prepare_base"]["params"] == ["base"]
    assert stages["synthesize"]["params"] == ["data"]


def test_dvc_config_sends_nothing_home():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["core"]["analytics"] == "false"
    assert config["core"]["check_update"] == "false"
