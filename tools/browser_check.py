"""Check, in a real browser with the network cut off, that report pages draw their plots.

    python -m tools.browser_check dvc_plots/index.html reports/report.html --screenshots reports/screens

Opens each page in headless Chromium (Debian's `chromium`; `make browser` installs it) with every
http(s) request sent to a dead proxy and every host name unresolvable, lets its scripts run, then
counts the drawn plot surfaces in the resulting DOM: Vega's `class="marks"` canvas/svg, plotly's
`main-svg`. A page that needed a CDN draws none and fails. Writes a PNG screenshot of each page.
Not a pipeline stage: a check run by the tests (when Chromium is there) and by hand after `dvc plots show`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main

OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-extensions",
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no request leaves the machine
    "--virtual-time-budget=20000",  # let async rendering finish before the DOM is dumped
)
SURFACES = re.compile(r'<(?:canvas|svg)[^>]*class="(?:marks|main-svg)')


class BrowserError(ProjectError, RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _run(chromium: str, page: Path, *extra: str, user_dir: Path) -> subprocess.CompletedProcess:
    args = [chromium, *OFFLINE_FLAGS, f"--user-data-dir={user_dir}", *extra, page.resolve().as_uri()]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        raise BrowserError(f"{page}: Chromium did not finish in 180 s") from None


def drawn_surfaces(page: Path, chromium: str, user_dir: Path) -> int:
    """How many plot surfaces the page has after its scripts ran, offline."""
    result = _run(chromium, page, "--dump-dom", user_dir=user_dir)
    if result.returncode != 0 or "<html" not in result.stdout:
        raise BrowserError(f"{page}: Chromium failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return len(SURFACES.findall(result.stdout))


def screenshot(page: Path, out: Path, chromium: str, user_dir: Path, size: str = "1600,1400") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        chromium, page, f"--screenshot={out.resolve()}", f"--window-size={size}", "--hide-scrollbars", user_dir=user_dir
    )
    if not out.exists() or out.stat().st_size == 0:
        raise BrowserError(f"{page}: no screenshot written to {out}")
    return out


def check_pages(pages: list[Path], screenshots: Path | None, minimum: int = 1) -> dict[str, int]:
    chromium = find_chromium()
    if chromium is None:
        raise BrowserError("no Chromium found: install Debian's chromium (`make browser`)")
    results = {}
    profile = Path(screenshots or Path.cwd()) / ".chromium-profile"
    try:
        for page in pages:
            if not page.is_file():
                raise BrowserError(f"{page}: no such page")
            n = drawn_surfaces(page, chromium, profile)
            if screenshots:
                screenshot(page, screenshots / f"{page.parent.name}-{page.stem}.png", chromium, profile)
            if n < minimum:
                raise BrowserError(f"{page}: {n} plots drew offline, expected at least {minimum}")
            results[str(page)] = n
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return results


@stage_main("browser_check")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--screenshots", type=Path, help="folder for one PNG per page")
    parser.add_argument("--minimum", type=int, default=1, help="plots each page must draw (default: %(default)s)")
    args = parser.parse_args(argv)
    results = check_pages(args.pages, args.screenshots, args.minimum)
    return "; ".join(f"{page}: {n} plots drew with the network off" for page, n in results.items())


if __name__ == "__main__":
    sys.exit(main())
