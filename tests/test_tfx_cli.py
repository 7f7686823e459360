"""The tfx CLI drives the local runner file: `tfx pipeline create`, then `tfx run create`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lt4rec.pipeline import configs, local_runner

pytestmark = pytest.mark.e2e

TFX = os.path.join(os.path.dirname(sys.executable), "tfx")
RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipeline", "local_runner.py")


def test_tfx_cli_creates_and_runs_the_pipeline(tiny_logs, tmp_path):
    env = {
        **os.environ,
        "LOCAL_HOME": str(tmp_path / "tfx_home"),  # where the tfx CLI keeps its pipelines (default ~/tfx/local)
        "LT4REC_PIPELINE_NAME": "lt4rec_cli_test",
        "LT4REC_DATA_ROOT": tiny_logs,
        "LT4REC_PIPELINE_ROOT": str(tmp_path / "pipeline"),
        "LT4REC_SERVING_DIR": str(tmp_path / "serving"),
        "LT4REC_TABLE_SCALE": "0.01",
    }
    created = subprocess.run(
        [TFX, "pipeline", "create", "--engine", "local", "--pipeline_path", RUNNER],
        env=env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr[-3000:]
    assert os.path.isdir(tmp_path / "tfx_home" / "lt4rec_cli_test")
    assert not os.path.exists(tmp_path / "pipeline" / "metadata.sqlite")  # compiled, not run

    ran = subprocess.run(
        [TFX, "run", "create", "--engine", "local", "--pipeline_name", "lt4rec_cli_test"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    settings = configs.PipelineSettings(
        data_root=tiny_logs,
        pipeline_root=str(tmp_path / "pipeline"),
        serving_dir=str(tmp_path / "serving"),
        pipeline_name="lt4rec_cli_test",
    )
    steps = {step.component: step.state for step in local_runner.last_run_steps(settings)}
    assert set(steps) >= {"LogExampleGen", "Transform", "MaskSearch", "SparseSharingTrainer", "Evaluator", "TaskPusher"}
    assert set(steps.values()) == {"COMPLETE"}, steps
