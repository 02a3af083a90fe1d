"""Data-parallel DEQ training on 4 simulated CPU devices matches one device."""

import json
import os
import pathlib
import subprocess
import sys


EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "deq_sharded.py"


def test_sharded_training_step_matches_single_device():
    # The device count is fixed when XLA starts, so this runs in a fresh process.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["x_sharding"] == "P('batch',)"
    assert report["loss_rel_err"] < 1e-9 and report["grad_rel_err"] < 1e-7
    assert report["ok"]
