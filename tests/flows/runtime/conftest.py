"""A real one-node Slurm for the tests: ``infra/hpc/slurm-local.sh`` (the script behind
``make slurm``) in a temporary folder, on free loopback ports, stopped at the end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "infra" / "hpc" / "slurm-local.sh"
NOT_INSTALLABLE = 3  # the script's exit code when apt cannot install Slurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, free_tcp_port):
    """Start Slurm (installing it with apt when missing); yield ``env``, the variables that
    point commands at it (``SLURM_CONF``, ``SLN_SLURM_DIR``), and its state folder.

    Skips, with the script's own words, only when Slurm is not installed and apt cannot
    install it; any other failure to start is an error."""
    state = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "SLN_SLURM_DIR": str(state),
        "SLN_SLURMCTLD_PORT": str(free_tcp_port()),
        "SLN_SLURMD_PORT": str(free_tcp_port()),
    }
    env.pop("SLURM_CONF", None)
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    if started.returncode == NOT_INSTALLABLE:
        pytest.skip(f"Slurm cannot be installed here: {started.stderr.strip()}")
    if started.returncode != 0:
        pytest.fail(f"slurm-local.sh start failed ({started.returncode}):\n{started.stderr}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield {
            "env": {"SLURM_CONF": env["SLURM_CONF"], "SLN_SLURM_DIR": str(state)},
            "dir": state,
        }
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
