"""The catalog website: pages from records, incremental rebuilds, the ``catalog`` command,
and the site driven in headless Chromium (over loopback HTTP and from file://)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import zlib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from arcoforge.catalog.manifest import MANIFEST, CatalogFolderError
from arcoforge.catalog.site import SiteError, render_site, write_site
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.cli import HIDE_MODULES, arcoforge, error_line, json_lines, ok
from arcoforge.testing.records import generated_record

HOSTILE = "<script>window.pwned=1</script>\"quoted\" & 'single' <img src=x onerror=window.pwned=2>"
WAIT = 10  # seconds any browser wait may take at most
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"  # screenshots CI keeps (git-ignored)


def hostile_record(i: int = 0):
    """A record with markup and quotes in every text a user or a source file writes."""
    record = generated_record(i, quicklook=True)
    variable = record.variables[0].model_copy(update={"long_name": HOSTILE, "units": HOSTILE})
    return generated_record(
        i,
        quicklook=True,
        title=f"Title {HOSTILE}",
        description=f"Description {HOSTILE}",
        license=f"License {HOSTILE}",
        license_url="javascript:window.pwned=3",
        providers=[{"name": f"Provider {HOSTILE}", "roles": [HOSTILE], "url": '"onclick="x'}],
        maintainers=[{"name": HOSTILE, "github": "<b>"}],
        tags=[f"tag {HOSTILE}"],
        variables=[variable, *record.variables[1:]],
        snippets={HOSTILE: f"print(1)  # {HOSTILE}"},
        repr=HOSTILE,
        error=f"store {HOSTILE}",
        status="unreadable",
    )


def png(width: int = 4, height: int = 3) -> bytes:
    """A small grey RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def quicklooks(records, folder: Path) -> Path:
    """Quick-look PNGs for ``records`` where :func:`write_site` looks for them."""
    for record in records:
        if record.quicklook:
            (folder / record.slug).mkdir(parents=True, exist_ok=True)
            for name in (record.quicklook.first, record.quicklook.last):
                (folder / record.slug / name).write_bytes(png())
    return folder


def stamps(out: Path) -> dict[str, int]:
    """Each file under ``out`` and its modification time in nanoseconds."""
    return {
        p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
    }


def embedded_index(html: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="catalog-index">(.*?)</script>', html)
    assert found, "no embedded index"
    return json.loads(found.group(1))


# -- pages from records ----------------------------------------------------------------


def test_user_text_is_escaped_and_only_web_urls_are_links(tmp_path):
    records = [hostile_record(0), generated_record(1)]
    write_site(records, tmp_path / "site", quicklook_dir=quicklooks(records, tmp_path / "q"))
    index = (tmp_path / "site" / "index.html").read_text()
    page = (tmp_path / "site" / "datasets" / records[0].slug / "index.html").read_text()
    for text in (index, page):
        assert "<script>window" not in text and "<img src=x" not in text
        assert "onclick" not in text.replace("&#34;onclick=&#34;x", "")
        assert 'href="javascript' not in text and 'href="&#34;' not in text
    assert index.count("<script") == 2  # the page's script and its JSON index
    assert page.count("<script") == 1
    escaped = "&lt;script&gt;window.pwned=1&lt;/script&gt;&#34;quoted&#34; &amp; &#39;single&#39;"
    assert f"Title {escaped}" in index and f"Title {escaped}" in page
    for text in ("Description", "License", "Provider", "store", "print(1)  #"):
        assert f"{text} {escaped}" in page, text
    assert page.count(escaped) >= 9  # long name, units, roles, maintainer, tag, snippet, repr...
    # the JSON index, embedded and as a file, holds the texts as they were
    entries = json.loads((tmp_path / "site" / "index.json").read_text())
    assert embedded_index(index) == entries
    hostile = next(e for e in entries if e["id"] == records[0].id)
    assert hostile["title"] == f"Title {HOSTILE}"
    assert hostile["long_names"] == [HOSTILE]


def test_a_page_shows_what_the_record_holds(tmp_path):
    record = generated_record(3, quicklook=True)
    files = render_site([record], base_url="https://data.example.org/catalog")
    page = files[f"datasets/{record.slug}/index.html"].decode()
    run = record.runs[0]
    for text in (
        f"<h1>{record.title}</h1>",
        f'<code class="url">{record.store.url}</code>',
        "Icechunk",  # the store type
        '<a href="https://spdx.org/licenses/CC-BY-4.0.html">CC-BY-4.0</a>',
        '<a href="https://example.org/provider">Met Office</a> <span class="roles">(producer, licensor)</span>',
        '<a href="https://github.com/maintainer3">@maintainer3</a>',
        f"<td>{record.dims[0].start}</td><td>{record.dims[0].end}</td>",
        '<td class="nowrap">1 \u00d7 720 \u00d7 1440</td>',  # chunks
        "<td>bytes, zstd</td>",
        "<td>sea_ice_area_fraction</td>",
        f'<img src="quicklook-first.png" alt="{record.quicklook.alt_first}">',
        '<button type="button" class="copy" data-copy="snippet-1"',
        "&lt;xarray.Dataset&gt;",
        f'<a href="runs/{run.id}.json" type="application/json">{run.id}</a>',
        "<td>failed</td><td>2026-11-01 03:00:00 UTC</td><td>43.0 s</td>",
        '<link rel="canonical" href="https://data.example.org/catalog/datasets/',
        'href="../../index.html"',  # links inside the site stay relative
        '<html lang="en">',
    ):
        assert text in page, text
    assert json.loads(files[f"datasets/{record.slug}/runs/{run.id}.json"]) == run.model_dump()
    entries = json.loads(files["index.json"])
    assert (
        entries[0]["url"] == f"https://data.example.org/catalog/datasets/{record.slug}/index.html"
    )
    assert f'href="datasets/{record.slug}/index.html"' in files["index.html"].decode()


def test_a_run_links_its_full_record_where_there_is_one_else_its_summary(tmp_path):
    records = [generated_record(1), generated_record(2)]
    full = '{"id": "full record"}\n'
    write_site(records, tmp_path / "site", run_records={records[0].runs[0].id: full})
    paths = [
        tmp_path / "site" / "datasets" / r.slug / "runs" / f"{r.runs[0].id}.json" for r in records
    ]
    assert paths[0].read_text() == full
    assert json.loads(paths[1].read_text()) == records[1].runs[0].model_dump()


def test_an_unreadable_store_gets_a_page_saying_why(tmp_path):
    record = generated_record(5)
    assert record.status == "unreadable"
    page = render_site([record])[f"datasets/{record.slug}/index.html"].decode()
    assert (
        "<h2>The store could not be opened</h2>\n  <p>FileNotFoundError: zarr.json not found</p>"
        in page
    )
    assert '<span class="badge status-unreadable">unreadable</span>' in page


def test_two_datasets_of_one_page_name_are_refused():
    one, two = generated_record(1), generated_record(2)
    with pytest.raises(SiteError) as info:
        render_site([one, two.model_copy(update={"slug": one.slug.upper()})])
    assert str(info.value) == (
        f"datasets {one.id!r} and {two.id!r} have one page name {one.slug.upper()!r}"
    )
    with pytest.raises(SiteError) as info:
        render_site([one.model_copy(update={"slug": "../escape"})])
    assert str(info.value) == f"dataset {one.id!r}: slug '../escape' is not a file name"


# -- incremental rebuilds --------------------------------------------------------------


def test_a_rebuild_rewrites_only_what_changed(tmp_path):
    out = tmp_path / "site"
    records = [generated_record(i) for i in range(4)]
    first = write_site(records, out)
    assert first.unchanged == [] and "index.html" in first.written
    before = stamps(out)
    assert write_site(records, out).written == []
    assert stamps(out) == before

    records[2] = records[2].model_copy(update={"description": "A better description."})
    again = write_site(records, out)
    assert sorted(again.written) == [
        f"datasets/{records[2].slug}/index.html",
        "index.html",
        "index.json",
    ]
    after = stamps(out)
    changed = {path for path in before if after[path] != before[path]}
    assert changed == {*again.written, MANIFEST}


def test_removed_datasets_lose_their_pages_but_files_others_made_stay(tmp_path):
    out = tmp_path / "site"
    records = [generated_record(i) for i in range(4)]
    write_site(records, out)
    gone, edited = records[2], records[3]
    (out / "notes.txt").write_text("mine")
    (out / "datasets" / gone.slug / "mine.txt").write_text("mine too")
    (out / "datasets" / edited.slug / "index.html").write_text("edited by hand")

    done = write_site(records[:2], out)
    assert sorted(done.removed) == sorted(
        [
            f"datasets/{gone.slug}/index.html",
            f"datasets/{gone.slug}/runs/{gone.runs[0].id}.json",
            f"datasets/{edited.slug}/runs/{edited.runs[0].id}.json",
        ]
    )
    assert done.kept == [f"datasets/{edited.slug}/index.html"]
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "datasets" / gone.slug).iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in (out / "datasets" / edited.slug).iterdir()) == ["index.html"]
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert not any(gone.slug in path or edited.slug in path for path in manifest)


def test_a_folder_the_catalog_did_not_make_is_refused(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(CatalogFolderError) as info:
        write_site([generated_record(0)], out)
    assert str(info.value) == (
        f"--out {out}: not empty and not a catalog (no {MANIFEST}); give a new or empty folder"
    )
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_a_file_in_the_way_of_a_new_page_is_refused(tmp_path):
    out = tmp_path / "site"
    write_site([generated_record(0)], out)
    new = generated_record(1)
    page = out / "datasets" / new.slug / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("mine")
    before = stamps(out)
    with pytest.raises(CatalogFolderError) as info:
        write_site([generated_record(0), new], out)
    assert str(info.value) == f"{page}: exists and the catalog did not write it; move it away"
    assert stamps(out) == before and page.read_text() == "mine"


def test_removal_never_follows_a_symbolic_link(tmp_path, caplog):
    """A manifest naming files behind a symlinked folder or a symlinked file: what they
    lead to stays, with a warning line each, and the rebuild completes."""
    out, victim = tmp_path / "site", tmp_path / "victim"
    victim.mkdir()
    (victim / "f.txt").write_text("victim's")
    (victim / "g.txt").write_text("victim's too")
    write_site([generated_record(0)], out)
    (out / "d").symlink_to(victim, target_is_directory=True)
    (out / "g.txt").symlink_to(victim / "g.txt")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"].update({"d/f.txt": None, "g.txt": None})
    (out / MANIFEST).write_text(json.dumps(manifest))

    with caplog.at_level("WARNING", logger="arcoforge.catalog.manifest"):
        done = write_site([generated_record(0)], out)
    assert done.removed == [] and done.kept == ["d/f.txt", "g.txt"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{out / 'd' / 'f.txt'}: left in place, not removed ({out / 'd'} is a symbolic link)",
        f"{out / 'g.txt'}: left in place, not removed ({out / 'g.txt'} is a symbolic link)",
    ]
    assert sorted(p.name for p in victim.iterdir()) == ["f.txt", "g.txt"]
    assert (victim / "f.txt").read_text() == "victim's"
    assert (out / "d").is_symlink() and (out / "g.txt").is_symlink()


@pytest.mark.parametrize(
    "manifest, cause",
    [
        ("{", "not a catalog manifest (Expecting property name enclosed in double quotes"),
        ('{"format": "arcoforge-catalog/1", "files": {"../../etc/passwd": null}}',
         "not a catalog manifest (format arcoforge-catalog/1 expected)"),
    ],
)  # fmt: skip
def test_a_broken_manifest_is_refused_and_nothing_is_removed(tmp_path, manifest, cause):
    out = tmp_path / "site"
    out.mkdir()
    (out / MANIFEST).write_text(manifest)
    with pytest.raises(CatalogFolderError) as info:
        write_site([generated_record(0)], out)
    assert str(info.value).startswith(f"{out / MANIFEST}: {cause}")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]


# -- in a real browser -----------------------------------------------------------------


def chromium_paths() -> tuple[str, str]:
    """Chromium and its driver; a skip only where the environment allows it."""
    binary = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    driver = shutil.which("chromedriver")
    if binary and driver:
        return binary, driver
    missing = "chromium" if not binary else "chromedriver"
    if os.environ.get("ARCOFORGE_ALLOW_NO_BROWSER") == "1":
        pytest.skip(f"{missing} is not installed (ARCOFORGE_ALLOW_NO_BROWSER=1)")
    pytest.fail(f"{missing} is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, its console kept for :func:`console_errors`."""
    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(WAIT)
    yield chrome
    chrome.quit()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def serve():
    """``serve(folder)``: the folder over HTTP on loopback, its URL."""
    servers = []

    def start(folder: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def console_errors(chrome) -> list[dict]:
    return [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]


def open_index(chrome, url: str) -> None:
    chrome.get(url)
    WebDriverWait(chrome, WAIT).until(
        lambda c: c.execute_script("return document.documentElement.dataset.ready") == "true"
    )


def shown(chrome) -> list[str]:
    """The slugs of the cards on show."""
    return chrome.execute_script(
        "return Array.from(document.querySelectorAll('#cards > li')).map(li => li.dataset.slug)"
    )


def choose(chrome, name: str, value: str) -> None:
    Select(chrome.find_element("id", f"filter-{name}")).select_by_value(value)


def search(chrome, text: str) -> None:
    box = chrome.find_element("id", "q")
    box.clear()
    box.send_keys(text)


@pytest.mark.browser
def test_generated_site_searches_filters_and_runs_no_injected_script(browser, serve, tmp_path):
    records = [hostile_record(0), *(generated_record(i, quicklook=True) for i in range(1, 8))]
    out = tmp_path / "site"
    write_site(records, out, quicklook_dir=quicklooks(records, tmp_path / "q"))
    by_slug = {r.slug: r for r in records}
    open_index(browser, serve(out))
    assert len(shown(browser)) == 8
    assert browser.find_element("id", "count").text == "8 of 8 datasets"

    search(browser, "uwnd")  # a variable's name
    assert [by_slug[s].title for s in shown(browser)] == ["Daily wind 4"]
    search(browser, "Window")  # a word in the hostile texts, any case
    assert shown(browser) == [records[0].slug]
    search(browser, "SEA_ICE sst")  # every word must match; variables count
    assert shown(browser) == []
    assert browser.find_element("id", "nothing").is_displayed()
    search(browser, "sst")
    assert sorted(shown(browser)) == sorted(r.slug for r in records if r.variables[0].name == "sst")
    browser.find_element("id", "clear").click()
    choose(browser, "status", "failed")
    assert shown(browser) == [r.slug for r in records if r.status == "failed"]
    choose(browser, "status", "")
    choose(browser, "type", "zarr")
    choose(browser, "provider", "NOAA")
    choose(browser, "tag", "satellite")
    expected = [
        r.slug
        for r in records
        if r.store.type == "zarr"
        and "NOAA" in [p.name for p in r.providers]
        and "satellite" in r.tags
    ]
    assert len(expected) == 1 and shown(browser) == expected
    choose(browser, "license", "ODbL-1.0")
    assert shown(browser) == []
    choose(browser, "license", "CC0-1.0")
    assert shown(browser) == expected
    # the filters are in the address: a reload shows the same cards
    assert browser.current_url.endswith("#tag=satellite&license=CC0-1.0&provider=NOAA&type=zarr")
    open_index(browser, browser.current_url)
    assert shown(browser) == expected

    # the hostile dataset's texts are texts: nothing of them ran
    browser.get(f"{serve(out)}datasets/{records[0].slug}/index.html")
    heading = browser.find_element("tag name", "h1").text
    assert heading == f"Title {HOSTILE}"
    assert browser.execute_script("return window.pwned === undefined")
    assert console_errors(browser) == []


# -- the catalog command, end to end ---------------------------------------------------

RECIPE = """\
from pathlib import Path

import pandas as pd

from arcoforge import ConcatDim, FilePattern, OpenURLWithFSSpec
from arcoforge.recipe import OpenWithKerchunk, OpenWithXarray, StoreToZarr, WriteCombinedReference

HERE = Path(__file__).parent
dates = pd.date_range("1981-09-01", periods=4, freq="D")


def make_url(time):
    return (HERE / "sample-data" / f"oisst-avhrr-v02r01.{time:%Y%m%d}.nc").as_uri()


pattern = FilePattern(make_url, ConcatDim("time", dates, nitems_per_file=1), file_type="netcdf4")
recipe = pattern | OpenURLWithFSSpec() | OPENER | WRITER
"""
FEEDSTOCKS = {
    "sst-zarr": {
        "title": "Sea surface temperature, daily Zarr",
        "tags": ["ocean", "satellite"],
        "license": "CC-BY-4.0",
        "provider": "NOAA NCEI",
        "opener": "OpenWithXarray()",
        "writer": 'StoreToZarr(store_name="sst.zarr", target_chunks={"time": 2})',
    },
    "sst-refs": {
        "title": "Sea surface temperature, kerchunk references",
        "tags": ["ocean", "virtual"],
        "license": "CC0-1.0",
        "provider": "Example Bakery",
        "opener": "OpenWithKerchunk()",
        "writer": 'WriteCombinedReference(store_name="sst-refs", concat_dims=["time"])',
    },
}


def write_feedstock(folder: Path, spec: dict) -> Path:
    """A feedstock of four tiny OISST-like days, as ``spec`` describes it."""
    write_oisst_archive(folder / "sample-data", days=4, ny=18, nx=36)
    meta = {
        "title": spec["title"],
        "description": f"Four days of {spec['title'].lower()}, for the catalog's tests.",
        "recipes": [{"id": folder.name, "object": "recipe:recipe"}],
        "provenance": {
            "providers": [
                {"name": spec["provider"], "roles": ["producer"], "url": "https://example.org"}
            ],
            "license": spec["license"],
        },
        "maintainers": [{"name": "A. Tester", "github": "a-tester"}],
        "tags": spec["tags"],
    }
    (folder / "meta.yaml").write_text(json.dumps(meta))
    code = RECIPE.replace("OPENER", spec["opener"]).replace("WRITER", spec["writer"])
    (folder / "recipe.py").write_text(code)
    return folder


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> Path:
    """Two feedstocks (Zarr, references) baked under ``out`` by the real command."""
    root = tmp_path_factory.mktemp("baked")
    for name, spec in FEEDSTOCKS.items():
        write_feedstock(root / name, spec)
        ok(arcoforge("bake", name, "--target-root", "out", "--workers", "1", cwd=root))
    return root


@pytest.fixture(scope="module")
def site(baked) -> Path:
    """The catalog of :func:`baked`, built by ``arcoforge catalog`` into ``site``."""
    proc = ok(arcoforge("catalog", *FEEDSTOCKS, "--target-root", "out", "--out", "site", cwd=baked))
    assert proc.stdout.splitlines()[:2] == [
        "ok          sst-zarr/sst-zarr",
        "ok          sst-refs/sst-refs",
    ]
    assert re.fullmatch(
        r"site/index.html: 2 datasets; \d+ files written, 0 unchanged, 0 removed\n",
        proc.stdout.splitlines(keepends=True)[2],
    )
    return baked / "site"


def test_the_command_writes_pages_stac_and_runs_and_a_rerun_writes_nothing(baked, site):
    slugs = sorted(p.name for p in (site / "datasets").iterdir())
    assert slugs == ["sst-refs--sst-refs", "sst-zarr--sst-zarr"]
    for slug in slugs:
        names = {p.name for p in (site / "datasets" / slug).iterdir()}
        assert names == {"index.html", "quicklook-first.png", "quicklook-last.png", "runs"}
        assert (site / "stac" / slug / "collection.json").is_file()
    zarr = (site / "datasets" / "sst-zarr--sst-zarr" / "index.html").read_text()
    assert f'<code class="url">{baked / "out" / "sst.zarr"}</code>' in zarr
    assert "<td>1981-09-01T12:00:00</td><td>1981-09-04T12:00:00</td>" in zarr
    # each run's link serves its full record, as bake wrote it beside the store
    runs = list((site / "datasets" / "sst-zarr--sst-zarr" / "runs").iterdir())
    assert runs
    for run in runs:
        beside = baked / "out" / ".arcoforge-runs" / run.name
        assert json.loads(run.read_text()) == json.loads(beside.read_text())
    catalog = json.loads((site / "stac" / "catalog.json").read_text())
    assert catalog["type"] == "Catalog"
    assert sorted(link["href"] for link in catalog["links"] if link["rel"] == "child") == [
        f"./{slug}/collection.json" for slug in slugs
    ]
    before = stamps(site)
    proc = ok(arcoforge("catalog", *FEEDSTOCKS, "--target-root", "out", "--out", "site", cwd=baked))
    assert proc.stdout.splitlines()[2] == (
        f"site/index.html: 2 datasets; 0 files written, {len(before) - 1} unchanged, 0 removed"
    )
    assert stamps(site) == before


def test_a_feedstock_left_out_loses_its_pages_and_collection(baked, tmp_path):
    out = tmp_path / "site"
    ok(arcoforge("catalog", *FEEDSTOCKS, "--target-root", "out", "--out", out, cwd=baked))
    (out / "datasets" / "sst-refs--sst-refs" / "notes.txt").write_text("mine")
    proc = ok(
        arcoforge("catalog", "sst-zarr", "--target-root", "out", "--out", out, "--json", cwd=baked)
    )
    summary = json_lines(proc.stdout)[-1]
    assert summary["event"] == "summary" and summary["datasets"] == 1
    assert summary["removed"] == 7 and summary["kept"] == 0  # page, 2 quick-looks, run; STAC 3
    assert sorted(p.name for p in (out / "datasets").iterdir()) == [
        "sst-refs--sst-refs",
        "sst-zarr--sst-zarr",
    ]
    assert [p.name for p in (out / "datasets" / "sst-refs--sst-refs").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in (out / "stac").iterdir()) == [
        "catalog.json",
        "sst-zarr--sst-zarr",
    ]
    assert "sst-refs" not in (out / "index.json").read_text()


@pytest.mark.browser
def test_the_site_in_a_browser(browser, serve, site):
    url = serve(site)
    open_index(browser, url)
    assert sorted(shown(browser)) == ["sst-refs--sst-refs", "sst-zarr--sst-zarr"]
    choose(browser, "type", "zarr")
    assert shown(browser) == ["sst-zarr--sst-zarr"]
    choose(browser, "type", "references-json")
    assert shown(browser) == ["sst-refs--sst-refs"]
    browser.find_element("id", "clear").click()
    search(browser, "anom satellite")  # a variable and a tag
    assert shown(browser) == ["sst-zarr--sst-zarr"]
    choose(browser, "license", "CC0-1.0")
    assert shown(browser) == []
    browser.find_element("id", "clear").click()
    choose(browser, "provider", "Example Bakery")
    assert shown(browser) == ["sst-refs--sst-refs"]
    shot = screenshot(browser, "catalog-index.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.find_element("link text", FEEDSTOCKS["sst-refs"]["title"]).click()
    WebDriverWait(browser, WAIT).until(lambda c: c.current_url.endswith("/index.html"))
    assert browser.current_url == f"{url}datasets/sst-refs--sst-refs/index.html"
    assert browser.find_element("tag name", "h1").text == FEEDSTOCKS["sst-refs"]["title"]
    assert_images_loaded(browser, 2)
    # a snippet's Copy button puts its code on the clipboard
    origin = url.rstrip("/")
    permissions = ["clipboardReadWrite", "clipboardSanitizedWrite"]
    browser.execute_cdp_cmd(
        "Browser.grantPermissions", {"permissions": permissions, "origin": origin}
    )
    button = browser.find_element("css selector", "button[data-copy='snippet-1']")
    button.click()
    WebDriverWait(browser, WAIT).until(
        lambda c: (
            c.find_element("css selector", "#open ~ .copied").text == "Copied to the clipboard."
        )
    )
    code = browser.execute_script("return document.getElementById('snippet-1').textContent")
    assert "sst-refs" in code
    assert browser.execute_script("return navigator.clipboard.readText()") == code
    assert screenshot(browser, "catalog-dataset.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console_errors(browser) == []

    run_link = browser.find_element("css selector", "#runs ~ div a[type='application/json']")
    run_id = run_link.text
    run_link.click()
    WebDriverWait(browser, WAIT).until(lambda c: c.current_url.endswith(f"{run_id}.json"))
    run = json.loads(browser.find_element("tag name", "pre").text)
    assert run["id"] == run_id and run["status"] == "succeeded" and run["inputs"]["count"] == 4
    assert run["stage_seconds"] and run["target"].startswith("/")  # the full run record

    browser.back()
    browser.find_element("link text", "STAC catalog").click()
    WebDriverWait(browser, WAIT).until(lambda c: c.current_url.endswith("stac/catalog.json"))
    catalog = json.loads(browser.find_element("tag name", "pre").text)
    assert catalog["type"] == "Catalog" and catalog["id"] == "arcoforge"
    # one child link leads to its collection, whose thumbnail is the quick-look PNG
    (child,) = [
        link["href"]
        for link in catalog["links"]
        if link["rel"] == "child" and "sst-zarr--sst-zarr" in link["href"]
    ]
    browser.get(urllib.parse.urljoin(browser.current_url, child))
    assert browser.current_url == f"{url}stac/sst-zarr--sst-zarr/collection.json"
    collection = json.loads(browser.find_element("tag name", "pre").text)
    assert collection["type"] == "Collection" and collection["id"] == "sst-zarr--sst-zarr"
    (interval,) = collection["extent"]["temporal"]["interval"]
    assert [t[:10] for t in interval] == ["1981-09-01", "1981-09-04"]
    (bbox,) = collection["extent"]["spatial"]["bbox"]
    assert len(bbox) == 4 and -90 <= bbox[1] < bbox[3] <= 90
    thumbnail = collection["assets"]["thumbnail"]
    assert thumbnail["type"] == "image/png"
    href = urllib.parse.urljoin(browser.current_url, thumbnail["href"])
    with urllib.request.urlopen(href, timeout=WAIT) as answer:
        assert answer.headers["Content-Type"] == "image/png"
        assert answer.read()[:8] == b"\x89PNG\r\n\x1a\n"
    # a JSON document has no <link rel="icon">, so the browser asks for /favicon.ico
    errors = console_errors(browser)
    assert [e for e in errors if "/favicon.ico - " not in e["message"]] == [], errors


def screenshot(chrome, name: str) -> Path:
    """Save a screenshot of the window in ``ARTIFACTS`` (kept by CI), print its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    chrome.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    return shot


def assert_images_loaded(chrome, expected: int) -> None:
    WebDriverWait(chrome, WAIT).until(
        lambda c: c.execute_script("return Array.from(document.images).every(i => i.complete)")
    )
    widths = chrome.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    alts = chrome.execute_script("return Array.from(document.images).map(i => i.alt)")
    assert len(widths) == expected and all(w > 0 for w in widths), widths
    assert all(alts), alts


@pytest.mark.browser
def test_the_site_from_a_folder_on_disk(browser, site):
    open_index(browser, (site / "index.html").as_uri())
    search(browser, "references")
    assert shown(browser) == ["sst-refs--sst-refs"]
    search(browser, "no-such-word")
    assert shown(browser) == []
    browser.find_element("id", "clear").click()
    browser.find_element("link text", FEEDSTOCKS["sst-zarr"]["title"]).click()
    assert browser.current_url == (site / "datasets" / "sst-zarr--sst-zarr" / "index.html").as_uri()
    assert_images_loaded(browser, 2)
    assert console_errors(browser) == []


@pytest.mark.browser
def test_the_site_on_a_phone_and_from_the_keyboard(browser, serve, site):
    """On a phone-sized window no page scrolls sideways (wide tables scroll in their own
    box); from the keyboard, Tab reaches the skip link, which leads into the page's main
    part: its STAC link, then the search box."""
    url = serve(site)
    browser.set_window_size(390, 844)
    try:
        for page in ("", "datasets/sst-zarr--sst-zarr/index.html"):
            open_index(browser, url) if not page else browser.get(url + page)
            widths = browser.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[1], (page, widths)
    finally:
        browser.set_window_size(1280, 1000)
    open_index(browser, url)
    body = browser.find_element("tag name", "body")
    body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    reached = []
    for _ in range(2):  # the intro's STAC link, then the search box
        browser.switch_to.active_element.send_keys(Keys.TAB)
        focused = browser.switch_to.active_element
        inside = "return arguments[0].closest('main') !== null"
        reached.append(
            (focused.text or focused.get_attribute("id"), browser.execute_script(inside, focused))
        )
    assert reached == [("STAC catalog", True), ("q", True)]
    focused.send_keys("references")
    assert shown(browser) == ["sst-refs--sst-refs"]


def test_serve_previews_the_site_until_ctrl_c(site):
    proc = subprocess.Popen(
        [sys.executable, "-m", "arcoforge.cli", "catalog", *FEEDSTOCKS, "--target-root", "out",
         "--out", "site", "--serve", "--port", "0"],
        cwd=site.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        served = re.fullmatch(r"serving (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)\n", lines[3])
        assert served, lines
        with urllib.request.urlopen(served.group(1), timeout=WAIT) as answer:
            assert answer.status == 200
            assert answer.read() == (site / "index.html").read_bytes()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert err == "stopped\n"


@pytest.mark.parametrize(
    "args, rc, line",
    [
        (["--port", "8001"], 2, "error: --port needs --serve"),
        (["--base-url", "ftp://host/x"], 2, "error: --base-url ftp://host/x: not an http:// or https:// URL"),
        (["--target-root", "nowhere://x"], 2, "error: --target-root nowhere://x: unknown protocol 'nowhere' (a folder, or a URL such as s3://bucket/prefix or icechunk://PATH)"),
        (["--storage-option", "anon=true"], 2, "error: --storage-option anon=true: unused, the target root out is local"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line(baked, tmp_path, args, rc, line):
    base = ["--target-root", "out", "--out", str(tmp_path / "site")]
    proc = arcoforge("catalog", "sst-zarr", *base, *args, cwd=baked)
    assert error_line(proc, rc=rc) == line
    assert not (tmp_path / "site").exists()


def test_a_missing_target_root_and_feedstock_are_one_line(baked, tmp_path):
    proc = arcoforge("catalog", "sst-zarr", "--out", "site", cwd=tmp_path.parent)
    assert (
        error_line(proc, rc=2)
        == "error: Invalid value for 'FEEDSTOCK...': Directory 'sst-zarr' does not exist."
    )
    proc = arcoforge("catalog", "sst-zarr", "--out", str(tmp_path / "site"), cwd=baked)
    assert (
        error_line(proc, rc=2)
        == "error: give --target-root (the folder or URL the stores are under)"
    )


def test_stores_on_an_object_store_and_no_secret_in_any_byte(baked, tmp_path, s3, bucket):
    secret = "catalog-s3cr3t-9f2c"
    flags = ["--storage-option", "key=catalog-key", "--storage-option", f"secret={secret}"]
    endpoint = s3["client_kwargs"]["endpoint_url"]
    flags += ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    flags += ["--storage-option", "client_kwargs.region_name=eu-west-1"]
    ok(arcoforge("bake", "sst-zarr", "--target-root", bucket, *flags, cwd=baked))
    out = tmp_path / "site"
    proc = ok(
        arcoforge("catalog", "sst-zarr", "--target-root", bucket, "--out", out, *flags, cwd=baked)
    )
    assert proc.stdout.startswith("ok          sst-zarr/sst-zarr\n")
    page = (out / "datasets" / "sst-zarr--sst-zarr" / "index.html").read_text()
    assert f'<code class="url">{bucket}/sst.zarr</code>' in page
    assert_quicklooks_are_png(out / "datasets" / "sst-zarr--sst-zarr")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert secret not in proc.stdout + proc.stderr


def assert_quicklooks_are_png(folder: Path) -> None:
    for name in ("quicklook-first.png", "quicklook-last.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_file_among_run_records_that_is_not_one_is_a_warning_line(baked, tmp_path):
    root = Path(shutil.copytree(baked / "out", tmp_path / "out"))
    junk = root / ".arcoforge-runs" / "notes.json"
    junk.write_text("[1, 2]")
    out = tmp_path / "site"
    proc = ok(arcoforge("catalog", "sst-zarr", "--target-root", root, "--out", out, cwd=baked))
    assert proc.stdout.startswith("ok          sst-zarr/sst-zarr\n")
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"warning: {junk}: not a run record, skipped (ValidationError: ")
    # records beside the copy match on their store name, so the copy keeps its history
    page = (out / "datasets" / "sst-zarr--sst-zarr" / "index.html").read_text()
    assert "<p>No run record of this dataset was found.</p>" not in page
    (run,) = [p.stem for p in (root / ".arcoforge-runs").glob("2*.json")]
    assert f">{run}</a>" in page


def test_a_feedstock_given_twice_and_a_port_in_use_are_one_line(baked, tmp_path):
    out = str(tmp_path / "site")
    proc = arcoforge(
        "catalog", "sst-zarr", "sst-zarr", "--target-root", "out", "--out", out, cwd=baked
    )
    assert error_line(proc, rc=1) == (
        "error: dataset 'sst-zarr/sst-zarr' is given twice (feedstock given twice?)"
    )
    assert proc.stdout == ""  # refused from meta.yaml, before any store was read
    assert not Path(out).exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = arcoforge(
            "catalog", "sst-zarr", "--target-root", "out", "--out", out, "--serve", "--port", port,
            cwd=baked,
        )  # fmt: skip
    assert error_line(proc, rc=1) == (
        f"error: --port {port}: cannot listen on 127.0.0.1: Address already in use "
        "(choose another port, or 0 for any free one)"
    )
    assert (Path(out) / "index.html").is_file()  # built, then the preview could not start


def test_two_feedstocks_of_one_page_name_are_refused_before_any_store_is_read(baked, tmp_path):
    twin = Path(shutil.copytree(baked / "sst-zarr", tmp_path / "SST-zarr"))
    out = tmp_path / "site"
    proc = arcoforge(
        "catalog", "sst-zarr", twin, "--target-root", "out", "--out", out, cwd=baked
    )  # fmt: skip
    assert error_line(proc, rc=1) == (
        "error: datasets 'sst-zarr/sst-zarr' and 'SST-zarr/sst-zarr' have one page name "
        "'SST-zarr--sst-zarr'"
    )
    assert proc.stdout == ""
    assert not out.exists()


def test_without_jinja2_the_command_names_the_extra(baked, tmp_path):
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_MODULES)
    env = {**os.environ, "ARCOFORGE_TEST_WITHOUT": "jinja2"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), str(tmp_path / "hide")])
    proc = subprocess.run(
        [sys.executable, "-m", "arcoforge.cli", "catalog", "sst-zarr", "--target-root", "out",
         "--out", str(tmp_path / "site")],
        cwd=baked, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert error_line(proc, rc=1) == (
        'error: catalog sites need jinja2: pip install "arcoforge[catalog]"'
    )
    assert not (tmp_path / "site").exists()


def test_an_out_folder_of_other_files_is_refused_before_any_store_is_read(baked, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "paper.pdf").write_bytes(b"%PDF")
    proc = arcoforge("catalog", "sst-zarr", "--target-root", "out", "--out", str(out), cwd=baked)
    assert error_line(proc, rc=1) == (
        f"error: --out {out}: not empty and not a catalog (no {MANIFEST}); give a new or empty folder"
    )
    assert [p.name for p in out.iterdir()] == ["paper.pdf"]


def test_an_unreadable_store_still_gets_a_page_saying_why(baked, tmp_path):
    store = tmp_path / "broken" / "sst.zarr"
    store.mkdir(parents=True)
    (store / "zarr.json").write_text("{not json")
    out = tmp_path / "site"
    proc = arcoforge(
        "catalog", "sst-zarr", "--target-root", str(store.parent), "--out", str(out), "--json",
        cwd=baked,
    )  # fmt: skip
    events = json_lines(ok(proc).stdout)
    assert [e["event"] for e in events] == ["dataset", "summary"]
    assert events[0]["dataset"] == "sst-zarr/sst-zarr" and events[0]["status"] == "unreadable"
    assert events[1]["datasets"] == 1 and events[1]["removed"] == 0
    page = (out / "datasets" / "sst-zarr--sst-zarr" / "index.html").read_text()
    assert "<h2>The store could not be opened</h2>" in page
    assert events[0]["error"] == (
        f"{store}: JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"
    )
    assert f"<p>{html.escape(events[0]['error'])}</p>" in page
