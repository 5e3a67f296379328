"""Renders an `autospec report` page in headless Chromium: a screenshot of its first screen,
and where the summary and the first figure end on it.

The page is either a report you give (``--report autospec_run/<date>/report.html``, what
the README shows) or one written here from simulated runs with a planted difference.
Chromium (Debian package ``chromium``) draws it at 1400 × 1000; a copy of the page with a
small script reports where the summary and the first figure end, which should be within
that first screen.

Usage:
    python benchmarks/report_screenshot.py [--report PAGE] [-o docs/figures/report_screenshot.png]
"""

import argparse
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from tf_autospec import cli
from tf_autospec.calibration import simulated_run, simulated_subjects

WIDTH, HEIGHT = 1400, 1000
_PROBE = ("<script>addEventListener('load', () => {const box = e => document.querySelector(e)"
          ".getBoundingClientRect(); document.body.dataset.ends = [box('.answer').bottom, "
          "box('.top img').bottom].join(' ')})</script></body>")


def _chromium(browser, profile, *arguments):
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *arguments],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout


def simulated_report(folder):
    """A report of 8 simulated runs (60/40 groups, SZ's rows 1.5 × larger in layer1)."""
    rng = np.random.default_rng(0)
    labels, _ = simulated_subjects(rng, 40, 0.4)
    runs = [str(simulated_run(os.path.join(folder, f"fold{i}.h5"), rng, labels, shift=0.5,
                              shift_layer="layer1/kernel", epochs=4).path) for i in range(8)]
    page = os.path.join(folder, "report.html")
    cli.main(["report", *runs, "-o", page, "--indices", "3"])
    return page


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", help="the page to render (default: one written from simulated runs)")
    parser.add_argument("-o", "--output", default="report_screenshot.png", help="the PNG to write")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("Install Chromium first (Debian: apt-get install chromium).")
    folder = tempfile.mkdtemp()
    page = os.path.abspath(args.report) if args.report else simulated_report(folder)
    _chromium(browser, os.path.join(folder, "profile"), f"--screenshot={os.path.abspath(args.output)}",
              f"file://{page}")
    probe = os.path.join(os.path.dirname(page), ".report_probe.html")  # beside the page: same relative links
    with open(page, encoding="utf-8") as f, open(probe, "w", encoding="utf-8") as out:
        out.write(f.read().replace("</body>", _PROBE))
    try:
        dom = _chromium(browser, os.path.join(folder, "profile"), "--virtual-time-budget=5000", "--dump-dom",
                        f"file://{probe}")
    finally:
        os.remove(probe)
    summary_end, figure_end = map(float, re.search(r'data-ends="([^"]+)"', dom).group(1).split())
    print(f"{args.output}: the summary ends at {summary_end:.0f} px, the first figure at {figure_end:.0f} px "
          f"({'within' if max(summary_end, figure_end) <= HEIGHT else 'below'} the first screen of {HEIGHT} px)")


if __name__ == "__main__":
    main()
