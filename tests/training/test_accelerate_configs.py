"""Every shipped accelerate YAML loads with accelerate's own loader and says how it is used."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml"))
EXPECTED = {
    "cpu.yaml": dict(num_processes=2, num_machines=1, mixed_precision="no"),
    "single_gpu.yaml": dict(num_processes=1, num_machines=1, mixed_precision="bf16"),
    "multi_gpu.yaml": dict(num_processes=2, num_machines=1, mixed_precision="fp16"),
    "multi_node.yaml": dict(num_processes=4, num_machines=2, mixed_precision="fp16"),
}


def test_all_expected_configs_exist():
    assert {path.name for path in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_loads_with_accelerate(path):
    config = load_config_from_file(str(path))
    for field, value in EXPECTED[path.name].items():
        assert getattr(config, field) == value, f"{path.name}: {field}"
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#")
    assert "accelerate launch --config_file accelerate_configs/" + path.name in path.read_text()


def test_multi_node_documents_its_addresses():
    config = load_config_from_file(str(REPO_ROOT / "accelerate_configs" / "multi_node.yaml"))
    assert config.main_process_ip and config.main_process_port and config.machine_rank == 0
    text = (REPO_ROOT / "accelerate_configs" / "multi_node.yaml").read_text()
    for key in ("main_process_ip", "main_process_port", "machine_rank"):
        assert f"# {key}" in text or f"{key}:" in text.split("compute_environment")[0], key
