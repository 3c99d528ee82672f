"""Catalog benchmark: a site and STAC catalog of 1,000 generated datasets, then its index
page in headless Chromium.

    python benchmarks/catalog.py [--datasets 1000]

The records come from :func:`arcoforge.testing.records.generated_record` (metadata only,
no store behind them, no quick-looks). It times a full build into a new folder (pages,
search index, STAC catalog), an unchanged rebuild, and, in headless Chromium over loopback
HTTP, how long the index page takes to load and become searchable and how long a search
and a filter take to show their cards. Targets: build under 30 s; load and filter under
1 s. Prints the figures as a markdown table and writes them to
benchmarks/results-catalog.md. Needs chromium and chromedriver on PATH and selenium.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from arcoforge.catalog.site import write_site  # noqa: E402
from arcoforge.catalog.stac import build_stac  # noqa: E402
from arcoforge.testing.records import generated_record  # noqa: E402

TARGET_BUILD = 30.0
TARGET_PAGE = 1.0
RESULTS = REPO / "benchmarks" / "results-catalog.md"

FILTER = """
const [kind, name, value] = arguments;
const field = document.getElementById(name);
const start = performance.now();
field.value = value;
field.dispatchEvent(new Event(kind, {bubbles: true}));
document.body.offsetHeight;  // the layout of the cards left, inside the timing
const ms = performance.now() - start;
return [ms, document.querySelectorAll('#cards > li').length];
"""


def build(records, out: Path) -> dict[str, float]:
    """Seconds of a full build into the new folder ``out`` and of an unchanged rebuild."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_stac(records, Path(tmp) / "stac")
        written = write_site(records, out, stac_dir=Path(tmp) / "stac")
        full = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_stac(records, Path(tmp) / "stac")
        again = write_site(records, out, stac_dir=Path(tmp) / "stac")
        rebuild = time.perf_counter() - start
    assert not again.written, again.written
    return {"files": len(written.written), "full": full, "rebuild": rebuild}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def browse(site: Path, datasets: int) -> dict[str, float]:
    """Seconds the index page takes to load and to answer a search and filters."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        chrome.get("about:blank")
        start = time.perf_counter()
        chrome.get(f"http://127.0.0.1:{server.server_port}/index.html")
        WebDriverWait(chrome, 30, poll_frequency=0.01).until(
            lambda c: c.execute_script("return document.documentElement.dataset.ready")
        )
        ready = time.perf_counter() - start
        load = chrome.execute_script(
            "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd;"
        )
        search_ms, searched = chrome.execute_script(FILTER, "input", "q", "sea ice")
        status_ms, failed = chrome.execute_script(FILTER, "change", "filter-status", "failed")
        clear_ms, everything = chrome.execute_script(FILTER, "input", "q", "")
        chrome.execute_script(FILTER, "change", "filter-status", "")
        assert 0 < searched < datasets and 0 < failed < searched, (searched, failed)
        assert everything == sum(1 for i in range(datasets) if i % 6 == 3)  # status failed
    finally:
        chrome.quit()
        server.shutdown()
    return {
        "load": load / 1000,
        "ready": ready,
        "search": search_ms / 1000,
        "filter": status_ms / 1000,
        "clear": clear_ms / 1000,
        "searched": searched,
        "failed": failed,
    }


def table(n: int, built: dict, page: dict, size: float) -> str:
    def row(what, seconds, target):
        verdict = "yes" if seconds < target else "**no**"
        return f"| {what} | {seconds:.3f} s | < {target:g} s | {verdict} |"

    return "\n".join(
        [
            f"# Catalog benchmark: {n:,} generated datasets",
            "",
            f"{platform.node()}, Python {platform.python_version()}, "
            f"{built['files']:,} files, index.html {size / 1e6:.1f} MB.",
            "",
            "| step | time | target | met |",
            "|---|---|---|---|",
            row(
                "full build (pages, search index, STAC) into a new folder",
                built["full"],
                TARGET_BUILD,
            ),
            row("unchanged rebuild (nothing written)", built["rebuild"], TARGET_BUILD),
            row("index page: load event", page["load"], TARGET_PAGE),
            row(
                "index page: searchable (WebDriver wall time, upper bound)",
                page["ready"],
                TARGET_PAGE,
            ),
            row(f"search 'sea ice' ({page['searched']} cards left)", page["search"], TARGET_PAGE),
            row(f"then filter status=failed ({page['failed']} left)", page["filter"], TARGET_PAGE),
            row("clear the search (status filter kept)", page["clear"], TARGET_PAGE),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000)
    args = parser.parse_args()
    records = [generated_record(i) for i in range(args.datasets)]
    with tempfile.TemporaryDirectory(prefix="arcoforge-catalog-bench-") as tmp:
        site = Path(tmp) / "site"
        built = build(records, site)
        page = browse(site, args.datasets)
        text = table(args.datasets, built, page, (site / "index.html").stat().st_size)
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
