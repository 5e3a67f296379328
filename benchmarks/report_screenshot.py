"""Renders an `autospec report` page in headless Chromium and saves a screenshot.

Builds simulated runs with a planted difference, writes the report with the CLI, and
asks Chromium (Debian package ``chromium``) for a PNG of the page, to look at.

Usage:
    python benchmarks/report_screenshot.py [-o docs/figures/report_screenshot.png]
"""

import argparse
import os
import shutil
import subprocess
import tempfile

import numpy as np

from tf_autospec import cli
from tf_autospec.calibration import simulated_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="report_screenshot.png")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("Install Chromium first (Debian: apt-get install chromium).")
    folder = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    runs = [str(simulated_run(os.path.join(folder, f"fold{i}.h5"), rng, shift=0.5, shift_layer="layer1/kernel",
                              epochs=4).path) for i in range(8)]
    page = os.path.join(folder, "report.html")
    cli.main(["report", *runs, "-o", page, "--indices", "3", "--permutations", "500"])
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={os.path.join(folder, 'profile')}", "--window-size=1000,1500",
         f"--screenshot={os.path.abspath(args.output)}", f"file://{page}"],
        check=True, capture_output=True, timeout=120,
    )
    print(args.output)


if __name__ == "__main__":
    main()
