"""The README's commands, run through the real ``sln`` entry point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tasks.data.store import FeatureStore

runner = CliRunner()


def test_synth_then_ingest_with_three_bad_rows(tmp_path):
    cohort_dir, store = tmp_path / "c", tmp_path / "s"
    result = runner.invoke(
        app, ["synth", "--patients", "40", "--out", str(cohort_dir), "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    manifest = cohort_dir / "manifest.csv"
    result = runner.invoke(app, ["ingest", str(manifest), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert len(FeatureStore(str(store)).read("cohort")) == 40

    # A missing file, an empty mask and a mask of the wrong size: three quarantined rows.
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    template = frame.iloc[0].to_dict()
    Image.fromarray(np.zeros((400, 500), np.uint8)).save(cohort_dir / "empty.png")
    Image.fromarray(np.full((50, 60), 255, np.uint8)).save(cohort_dir / "small.png")
    bad = [
        template | {"case_id": "X-MISSING", "patient_id": "PX1", "bmus_image": "gone.png"},
        template | {"case_id": "X-EMPTY", "patient_id": "PX2", "bmus_mask": "empty.png"},
        template | {"case_id": "X-SIZE", "patient_id": "PX3", "bmus_mask": "small.png"},
    ]
    pd.concat([frame, pd.DataFrame(bad)]).to_csv(manifest, index=False)
    result = runner.invoke(app, ["ingest", str(manifest), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "3 quarantined" in result.output
    tables = FeatureStore(str(store))
    assert len(tables.read("cohort")) == 40
    quarantine = tables.read("quarantine")
    assert sorted(quarantine["case_id"]) == ["X-EMPTY", "X-MISSING", "X-SIZE"]
    assert {"file not found", "mask is empty (no foreground pixel)"} <= set(quarantine["reason"])


def test_ingest_of_a_missing_manifest_exits_2(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope.csv"), "--store", str(tmp_path)])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_busbra_manifest_groups_patients_and_holds_out_a_scanner(tmp_path, shared_data):
    out = tmp_path / "busbra.csv"
    result = runner.invoke(
        app, ["busbra", "--out", str(out), "--data", str(shared_data / "busbra")]
    )
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(manifest) == 1875
    assert manifest["cdus_image"].eq("").all()
    assert set(manifest.loc[manifest["site"] == "APLIO300", "split"]) == {"validation"}
    # No patient straddles the held-out scanner and the rest.
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1
    assert manifest["label"].isin(["0", "1"]).all()
    assert (manifest["label"] == "1").sum() == 607


def test_weights_convert_tflite_command(tmp_path, shared_data):
    import torch

    out = tmp_path / "mnv2.pth"
    result = runner.invoke(app, ["weights", "convert-tflite", "--out", str(out)])
    assert result.exit_code == 0, result.output
    checkpoint = torch.load(out, map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"]["classifier.1.weight"].shape == (1000, 1280)
    assert checkpoint["meta"]["tf_padding"] is True


def test_local_key_makes_one_private_key_file_per_store(tmp_path):
    import stat

    from typer.testing import CliRunner

    from flows.cli import app

    store = tmp_path / "store"
    first = CliRunner().invoke(app, ["local-key", "--store", str(store)])
    assert first.exit_code == 0, first.output
    key = store / ".secrets" / "pseudonym.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) >= 32
    before = key.read_bytes()
    CliRunner().invoke(app, ["local-key", "--store", str(store)])
    assert key.read_bytes() == before  # an existing key is never replaced


@pytest.mark.slow
def test_run_shows_progress_bars_not_log_walls_unless_verbose(tiny_cohort, tmp_path, prefect_api):
    """``sln run`` as an operator sees it (stdout and stderr of the real command): a bar
    line per stage and the summary; the INFO lines of Prefect and Dask (flow process and
    workers) only with --verbose."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    from flows.runtime.console import QUIET_ENV

    sln = Path(sys.executable).parent / "sln"
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env |= {"SLN_EMBED": "false", "PREFECT_API_URL": prefect_api}
    outputs = {}
    for verbose in (False, True):
        cmd = [str(sln), "run", str(tiny_cohort), "--store", str(tmp_path / f"store-{verbose}")]
        cmd += ["--workers", "1", *(["--verbose"] if verbose else [])]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs[verbose] = done.stdout + done.stderr

    quiet = outputs[False].splitlines()
    # Nothing is lost at exit (the last collections are skipped, the drains still run): the
    # flow run's final state line reached the Prefect API.
    run_id = next(line.split("cohort-", 1)[1] for line in quiet if line.startswith("run_id:"))
    resp = httpx.post(
        f"{prefect_api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [run_id]}}},
    )
    resp.raise_for_status()
    messages = [entry["message"] for entry in resp.json()]
    assert "Finished in state Completed()" in messages, messages[-5:]
    bars = [line for line in quiet if line.startswith("radiomics ")]
    assert "8/8 cases 100%" in bars[-1] and "cases/s" in bars[-1], bars
    assert any("0/8 cases" in line and "s left" in line for line in bars), bars
    assert "cases_new: 8" in quiet
    assert not [line for line in quiet if "INFO" in line]
    assert len(quiet) < 40, outputs[False]

    loud = outputs[True]
    assert "INFO" in loud and "distributed.worker" in loud and "Finished in state" in loud
    assert not [line for line in loud.splitlines() if line.startswith("radiomics ")]
    assert "cases_new: 8" in loud


def test_the_cli_skips_the_garbage_collections_at_exit():
    """``sln`` exits without Python's final collections (:func:`gc.freeze` at exit, about
    0.3 s of each command): garbage left in a reference cycle is not collected at exit,
    as it is in a plain process."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "if sys.argv[1] == 'sln': import flows.cli\n"
        "class Node:\n"
        "    def __del__(self): os.write(1, b'collected')\n"
        "node = Node(); node.cycle = node; del node\n"
    )
    out = {
        how: subprocess.run(
            [sys.executable, "-c", code, how], capture_output=True, text=True, check=True
        ).stdout
        for how in ("plain", "sln")
    }
    assert out == {"plain": "collected", "sln": ""}


def test_foreground_runs_send_no_heartbeats_unless_configured(prefect_api, monkeypatch):
    """``sln`` commands run their flows without Prefect's flow-run heartbeats (a thread
    joined at the end of every flow run, up to 1 s each) unless heartbeats are configured,
    which then win."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from flows.cli import _with_api

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)

    def frequency():
        return get_current_settings().flows.heartbeat_frequency

    assert frequency() == 180  # Prefect's default, kept outside the commands
    assert _with_api(frequency) is None
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        assert _with_api(frequency) == 60
