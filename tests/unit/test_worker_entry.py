"""The worker's entry point refuses bad config or credential files with a clear reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rollingops.worker_config import WorkerConfig


def run_worker(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollingops.worker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_config_that_is_not_json_is_refused_with_its_reason(tmp_path):
    config = tmp_path / "worker.json"
    config.write_text("{not json")
    result = run_worker(config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"rollingops.worker: cannot use config {config}:")


def test_missing_credential_files_are_refused_with_their_reason(tmp_path):
    missing = tmp_path / "nowhere"
    config = WorkerConfig.model_validate(
        {
            "unit": "app/0",
            "charm_dir": str(tmp_path),
            "etcd": {
                "endpoints": ["127.0.0.1:1"],
                "ca_file": str(missing / "ca.pem"),
                "cert_file": str(missing / "cert.pem"),
                "key_file": str(missing / "key.pem"),
                "prefix": "/rollingops/x/",
            },
            "state_dir": str(tmp_path / "state"),
            "hook_runner": str(tmp_path / "juju-exec"),
        }
    )
    path = tmp_path / "worker.json"
    path.write_text(config.model_dump_json())
    result = run_worker(path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot use the credential files" in result.stderr
    assert "ca.pem" in result.stderr
