"""Render an HTML report in headless Chromium and save a screenshot, to look at it as a reader would.

    python tools/screenshot_report.py REPORT.html [-o REPORT.png] [--width 1200] [--height 3000]

Installs Chromium with ``apt-get install -y chromium`` when it is missing (a tools/ step, never CI's).
The browser runs with networking and background services off: the report must be self-contained.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    print("chromium not found: apt-get install -y chromium", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True)
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("chromium is still not installed")
    return found


def screenshot(report: Path, out: Path, width: int, height: int) -> Path:
    with tempfile.TemporaryDirectory(prefix="onnxopt-chromium-") as profile:
        subprocess.run(
            [
                chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
                report.resolve().as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    out = screenshot(args.report, args.output or args.report.with_suffix(".png"), args.width, args.height)
    print(out)


if __name__ == "__main__":
    main()
