"""The demo training script answers --help without training or registering anything (a newcomer's first try)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_help_describes_the_options_and_touches_no_store(tmp_path: Path) -> None:
    home = tmp_path / "stage-home"
    done = subprocess.run([sys.executable, "-m", "onnx_stage.flows.train_demo", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "ONNX_STAGE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"})

    assert done.returncode == 0, done.stderr
    assert all(option in done.stdout for option in ("--name", "--alias", "--epochs", "--seed"))
    assert not home.exists()  # no embedded MLflow store was created: nothing trained, nothing registered
