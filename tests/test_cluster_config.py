"""cluster.yaml passes Ray's own cluster-config validation and keeps the security rules."""

from __future__ import annotations

import copy

import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

from harness.paths import REPO_ROOT


def _config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation():
    config = fillout_defaults(copy.deepcopy(_config()))
    validate_config(config)  # raises jsonschema.ValidationError on a bad field
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1


def test_validation_rejects_a_misspelt_field():
    import jsonschema
    import pytest

    bad = fillout_defaults(copy.deepcopy(_config()))
    bad["available_node_types"]["head"]["resorces"] = {"CPU": 0}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


def test_only_ssh_is_open_and_services_bind_to_loopback():
    config = _config()
    perms = config["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    text = (REPO_ROOT / "cluster.yaml").read_text()
    head_cmds = " ".join(config["head_setup_commands"] + config["head_start_ray_commands"])
    assert "mlflow server --host 127.0.0.1" in head_cmds
    assert "postgresql://" in head_cmds
    assert "--dashboard-host=127.0.0.1" in head_cmds and "0.0.0.0" not in head_cmds
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "~/harness" in c for c in config["setup_commands"])
    assert "s3://" in text  # shared storage for experiment directories and artifacts
