"""Screenshot the Prefect UI with headless Chromium (``make ui-snapshot``).

Writes PNGs of the flow-runs page and, with ``--flow-run-id ID`` (or ``latest``: the newest
flow run that published artifacts), of that run's page on its Artifacts tab:

    python infra/ui_snapshot.py                          # docs/ui-flow-runs.png
    python infra/ui_snapshot.py --flow-run-id latest     # + docs/ui-flow-run.png
    python infra/ui_snapshot.py --url http://prefect.internal:4200 --flow-run-id <uuid>

Prefect 3.9 serves two UIs: V2 (the default) under ``/v2`` and V1 under ``/``. The pages
are ``/v2/runs`` and ``/v2/runs/flow-run/<id>?tab=Artifacts`` (V1: ``/runs`` and
``/runs/flow-run/<id>?tab=Artifacts``); ``--ui v1`` picks V1. The UI is a single-page app:
``--virtual-time-budget`` lets it fetch from the API and render before the screenshot.

Needs ``/usr/bin/chromium`` (Debian: ``apt-get install -y chromium``) and a running Prefect
server (``sln server``). Exit codes: 0 written, 1 server or screenshot failure, 2 no Chromium.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "http://127.0.0.1:4200"
CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "apt-get install -y chromium"


def ui_prefix(ui: str) -> str:
    return "/v2" if ui == "v2" else ""


def flow_runs_url(base: str, ui: str = "v2") -> str:
    return f"{base.rstrip('/')}{ui_prefix(ui)}/runs"


def flow_run_url(base: str, run_id: str, ui: str = "v2", tab: str = "Artifacts") -> str:
    return f"{base.rstrip('/')}{ui_prefix(ui)}/runs/flow-run/{run_id}?tab={tab}"


def chromium_command(
    chromium: str,
    url: str,
    out: Path,
    profile: Path,
    window: str = "1600,1000",
    budget_ms: int = 15000,
) -> list[str]:
    """Headless Chromium, a fresh profile, no background traffic, one screenshot."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={window}",
        f"--virtual-time-budget={budget_ms}",
        "--hide-scrollbars",
        f"--screenshot={out}",
        url,
    ]


def _api(base: str, path: str, body: dict | None = None, timeout: float = 10.0):
    url = f"{base.rstrip('/')}/api{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def server_up(base: str) -> bool:
    try:
        return _api(base, "/health") is True
    except (OSError, ValueError):
        return False


def latest_run_with_artifacts(base: str) -> str | None:
    """The flow run of the newest artifact (a run page whose Artifacts tab shows something)."""
    artifacts = _api(base, "/artifacts/filter", {"sort": "CREATED_DESC", "limit": 50})
    for artifact in artifacts:
        if artifact.get("flow_run_id"):
            return artifact["flow_run_id"]
    runs = _api(base, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    return runs[0]["id"] if runs else None


def looks_blank(png: Path) -> bool:
    """True when the image is (nearly) one colour: the app did not render."""
    try:
        from PIL import Image
    except ImportError:  # no Pillow: only the size check below applies
        return png.stat().st_size < 5000
    with Image.open(png) as img:
        colours = img.convert("RGB").getcolors(maxcolors=64)
    return colours is not None and len(colours) < 8


def screenshot(
    chromium: str, url: str, out: Path, window: str, budget_ms: int, timeout: float
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="sln-chromium-") as profile:
        cmd = chromium_command(chromium, url, out, Path(profile), window, budget_ms)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.exists():
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise RuntimeError(
            f"Chromium wrote no screenshot for {url} (exit {proc.returncode}):\n{tail}"
        )
    if looks_blank(out):
        raise RuntimeError(
            f"{out} looks blank: the UI did not render within the virtual time budget "
            f"({budget_ms} ms); try --budget-ms 30000"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help="Prefect server (UI) base URL")
    p.add_argument(
        "--flow-run-id", default=None, help="also shoot this run's Artifacts tab ('latest': newest)"
    )
    p.add_argument("--ui", choices=["v2", "v1"], default="v2", help="which Prefect UI")
    p.add_argument("--out-runs", type=Path, default=ROOT / "docs" / "ui-flow-runs.png")
    p.add_argument("--out-run", type=Path, default=ROOT / "docs" / "ui-flow-run.png")
    p.add_argument("--chromium", default=CHROMIUM, help="Chromium binary")
    p.add_argument("--window-size", default="1600,1000", help="viewport WIDTH,HEIGHT")
    p.add_argument("--budget-ms", type=int, default=15000, help="virtual time for the app")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per screenshot")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chromium = args.chromium if Path(args.chromium).exists() else shutil.which(args.chromium)
    if not chromium:
        print(f"{args.chromium} not found; install it with:  {INSTALL_HINT}", file=sys.stderr)
        return 2
    if not server_up(args.url):
        print(
            f"no Prefect server answers at {args.url}/api/health; start one with `sln server`",
            file=sys.stderr,
        )
        return 1
    shots = [(flow_runs_url(args.url, args.ui), args.out_runs)]
    run_id = args.flow_run_id
    if run_id == "latest":
        run_id = latest_run_with_artifacts(args.url)
        if run_id is None:
            print("no flow runs on this server yet; only the runs page", file=sys.stderr)
    if run_id:
        shots.append((flow_run_url(args.url, run_id, args.ui), args.out_run))
    try:
        for url, out in shots:
            screenshot(chromium, url, out, args.window_size, args.budget_ms, args.timeout)
            print(f"wrote {out}  ({url})")
    except (RuntimeError, subprocess.TimeoutExpired, urllib.error.URLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
