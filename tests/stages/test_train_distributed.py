"""`train` under a multi-process launcher (torchrun; `accelerate launch` sets the same RANK /
WORLD_SIZE / LOCAL_RANK variables): two CPU processes train together with DDP over gloo, and
exactly one MLflow run records it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_two_processes_train_one_run(mlflow_store, tmp_path):
    import socket

    from mlflow import MlflowClient

    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as probe:  # a free port for the rendezvous (port 0 is not allowed there)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Its own cache folder: the base-model evaluation it caches must not be found by other tests.
    env = dict(os.environ, OMP_NUM_THREADS="1", DISTILL_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "distill",
            "train",
            "--max_steps",
            "2",
            "--n_pairs",
            "16",
            "--per_device_batch_size",
            "2",
            "--eval_batch_size",
            "16",
            "--bootstrap_samples",
            "50",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    runs = [
        run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])
    ]
    # Rank 0's train run, and the base runs it logged (the base on the dev and eval splits).
    trains = [r for r in runs if r.data.tags.get("distill.stage") == "train"]
    assert len(trains) == 1, "only rank 0 may open an MLflow run"
    assert sorted(r.data.tags["distill.base.split"] for r in runs if r not in trains) == ["dev", "eval"]
    run = trains[0]
    assert run.info.status == "FINISHED"
    assert "distributed: 2 processes" in run.data.tags["train/backend_notes"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    # The other rank trained too (its own work folder), but logged nothing.
    assert (tmp_path / "out" / "rank1").is_dir()
