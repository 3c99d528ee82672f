"""What a user sees while a bake runs and when it fails: errors that retrying cannot fix
fail at once, retry warnings as they happen, --json events, plain progress when piped,
every-input-failed, a refused concat dim, the summary's words, and audits that never crash.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from arcoforge import ConcatDim, FilePattern, OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, bake
from arcoforge.amounts import count, size
from arcoforge.cli.templates import write_feedstock
from arcoforge.core.progress import PlainReporter
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.errors import RecipeError, SchemaError, SourceError
from arcoforge.recipe.patterns import pattern_from_file_sequence
from arcoforge.recipe.steps import OpenWithKerchunk, Recipe, WriteCombinedReference
from arcoforge.references.plan import describe, make_reference_plan
from arcoforge.testing.archives import oisst_dataset, write_oisst_archive
from arcoforge.testing.cli import NAME, arcoforge, error_line, json_lines, ok, sample_sources
from arcoforge.testing.compare import nothing_baked
from arcoforge.testing.httpserver import Faults, FileServer

DNS_HOST = "no-such-host.invalid"  # .invalid never resolves (RFC 6761)


@pytest.fixture
def archive(tmp_path) -> list[Path]:
    """Four daily OISST-like files on an 18x36 grid."""
    return write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)


def fetching(urls, retries: int = 5, retry_delay: float = 0.5):
    """``urls`` along time, fetched with the default retries and delay."""
    pattern = pattern_from_file_sequence(urls, "time", nitems_per_file=1)
    fetch = OpenURLWithFSSpec(retries=retries, retry_delay=retry_delay)
    return pattern | fetch | OpenWithXarray() | StoreToZarr("out.zarr")


def failing_bake(urls, tmp_path) -> tuple[str, float]:
    """The one line of the error a bake of ``urls`` stops with, and its wall time."""
    started = time.perf_counter()
    with pytest.raises(SourceError) as info:
        bake(fetching(urls), tmp_path / "out", workers=1)
    return str(info.value), time.perf_counter() - started


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- errors that retrying cannot fix ---------------------------------------------------


def test_unknown_host_fails_after_one_attempt(tmp_path, caplog):
    with pytest.raises(socket.gaierror) as resolved:
        socket.getaddrinfo(DNS_HOST, 80)
    # a resolver that does not answer (no network) says so: then one more attempt
    again = resolved.value.errno == socket.EAI_AGAIN
    url = f"http://{DNS_HOST}/x.nc"
    with caplog.at_level(logging.WARNING, logger="arcoforge"):
        line, seconds = failing_bake([url], tmp_path)
    tries = " (after 2 attempts)" if again else ""
    assert line == f"{url}: host {DNS_HOST} does not resolve ({resolved.value.strerror}){tries}"
    assert seconds < 5
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == int(again)


def test_refused_connection_fails_after_two_attempts(tmp_path, caplog):
    port = free_port()
    url = f"http://127.0.0.1:{port}/x.nc"
    with caplog.at_level(logging.WARNING, logger="arcoforge"):
        line, seconds = failing_bake([url], tmp_path)
    assert line == f"{url}: connection refused by 127.0.0.1:{port} (after 2 attempts)"
    assert seconds < 5
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 1
    assert retries[0].startswith(f"{url}: connection refused by 127.0.0.1:{port}; retry 1 of 1 in ")


@pytest.mark.parametrize(
    ("server_kwargs", "name", "cause"),
    [
        ({"auth": ("alice", "pa55")}, "1981-09-01", "HTTP 401 Unauthorized (check credentials)"),
        ({"token": "t0ken"}, "1981-09-01", "HTTP 403 Forbidden (check credentials)"),
        ({}, "no-such-file", "HTTP 404 Not Found"),
    ],
    ids=["401", "403", "404"],
)
def test_refusals_fail_after_one_attempt(archive, tmp_path, server_kwargs, name, cause):
    path = next((p for p in archive if name.replace("-", "") in p.name), None)
    file = path.name if path else f"{name}.nc"
    with FileServer(archive[0].parent, **server_kwargs) as server:
        url = f"{server.url}/{file}"
        line, seconds = failing_bake([url], tmp_path)
        attempts = [r for r in server.requests if r.startswith(f"/{file}")]
    assert line == f"{url}: {cause}"
    assert seconds < 5
    assert len(attempts) == 2, attempts  # one attempt: a HEAD for the size, fsspec's GET fallback


# -- --skip-failed when every input fails ----------------------------------------------


def test_skip_failed_when_every_input_fails_names_the_first_causes(tmp_path):
    urls = [(tmp_path / f"{name}.nc").as_uri() for name in "abcd"]
    with pytest.raises(SchemaError) as info:
        bake(fetching(urls), tmp_path / "out", workers=2, skip_failed=True)
    causes = "; ".join(f"{url}: file not found" for url in urls[:3])
    assert str(info.value) == f"every input failed (4 of 4): {causes}; and 1 more"
    assert nothing_baked(tmp_path / "out")


def test_skip_failed_when_every_input_fails_on_the_command_line(tmp_path):
    feedstock = write_feedstock(tmp_path / NAME)
    recipe = feedstock / "recipe.py"
    recipe.write_text(recipe.read_text().replace('"sample-data"', '"no-such-folder"'))
    proc = arcoforge("bake", NAME, "--target-root", "out", "--skip-failed", cwd=tmp_path)
    urls = [(feedstock / "no-such-folder" / p.name).as_uri() for p in sample_sources(feedstock)]
    causes = "; ".join(f"{url}: file not found" for url in urls[:3])
    assert error_line(proc, rc=1) == f"error: every input failed (4 of 4): {causes}; and 1 more"


# -- concat dims of WriteCombinedReference ---------------------------------------------


def references(pattern, concat_dims) -> Recipe:
    writer = WriteCombinedReference("ref", concat_dims=concat_dims)
    return pattern | OpenWithKerchunk() | writer


def test_a_concat_dim_neither_of_the_pattern_nor_of_the_inputs_is_refused(archive, tmp_path):
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", file_type="netcdf4")
    recipe = references(pattern, ["tim"])
    expected = (
        "WriteCombinedReference: concat dim 'tim' is neither a ConcatDim of the pattern (time) "
        f"nor a dim of the inputs ({archive[0]} has time, lat, lon)"
    )
    with pytest.raises(RecipeError) as info:
        bake(recipe, tmp_path / "out", workers=2)
    assert str(info.value) == expected
    assert not (tmp_path / "out" / "ref" / "reference.json").exists()
    plan = make_reference_plan(recipe, str(tmp_path / "out"), cache=None, workers=1)
    with pytest.raises(RecipeError) as info:
        describe(plan)  # --dry-run
    assert str(info.value) == expected


def test_a_concat_dim_the_files_lack_is_fine_when_it_is_the_patterns(tmp_path):
    """A new dim: each file holds one member, which only its name tells."""
    root = tmp_path / "src"
    root.mkdir()
    for member in (1, 2):
        oisst_dataset(days=2, ny=6, nx=12).to_netcdf(root / f"m{member}.nc", engine="netcdf4")
    pattern = FilePattern(lambda member: str(root / f"m{member}.nc"), ConcatDim("member", [1, 2]))
    result = bake(references(pattern, ["member"]), tmp_path / "out", workers=1)
    assert result.dims == {"member": 2, "time": 2, "lat": 6, "lon": 12}


# -- the summary -----------------------------------------------------------------------


def test_counts_and_sizes_are_written_for_people():
    assert [count(n, "input") for n in (0, 1, 2, 1200)] == [
        "0 inputs",
        "1 input",
        "2 inputs",
        "1,200 inputs",
    ]
    assert count(1, "write task") == "1 write task"
    assert [size(n) for n in (0, 999, 20_940, 3_400_000, 2_500_000_000)] == [
        "0 B",
        "999 B",
        "20.9 KB",
        "3.4 MB",
        "2.5 GB",
    ]


def table_rows(text: str) -> dict[str, str]:
    """The key-value rows of a rich table printed without a header."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def test_summary_of_one_input_and_of_an_up_to_date_bake(tmp_path):
    feedstock = write_feedstock(tmp_path / NAME)
    args = ("bake", NAME, "--target-root", "out", "--prune", "1", "--workers", "1")
    baked = ok(arcoforge(*args, cwd=tmp_path)).stdout
    assert baked.splitlines()[0].strip() == f"baked {NAME}"
    rows = table_rows(baked)
    nbytes = sample_sources(feedstock)[0].stat().st_size
    assert nbytes < 1e6
    assert rows["inputs"] == f"1 file, {nbytes / 1e3:.1f} KB"
    assert rows["validated"] == "1 input compared value for value"
    assert rows["written"].endswith(" KB stored") and "0.0 MB" not in baked
    again = ok(arcoforge(*args, cwd=tmp_path)).stdout
    assert again.splitlines()[0].strip() == f"{NAME}: up to date, nothing baked"
    assert table_rows(again)["status"] == "baked before from the same recipe and inputs"


# -- validate --against ----------------------------------------------------------------


@pytest.fixture
def baked_feedstock(tmp_path) -> tuple[Path, Path]:
    """A feedstock from ``arcoforge init``, baked into ``out/`` (chunks of two days)."""
    feedstock = write_feedstock(tmp_path / NAME)
    ok(arcoforge("bake", NAME, "--target-root", "out", "--workers", "1", cwd=tmp_path))
    return feedstock, tmp_path / "out" / f"{NAME}.zarr"


def test_validate_against_names_a_chunk_that_does_not_decode(baked_feedstock, tmp_path):
    _, store = baked_feedstock
    chunk = store / "sst/c/1/0/0"
    chunk.write_bytes(bytes(16) + chunk.read_bytes()[16:])  # the codec's header zeroed
    proc = arcoforge("validate", store, "--against", NAME, "--json", cwd=tmp_path)
    finding = (
        "sst: chunk c/1/0/0 does not decode: RuntimeError: error during blosc decompression: 0"
    )
    assert error_line(proc, rc=1) == f"error: {store}: 2 of 6 checks failed; first: {finding}"
    report = json.loads(proc.stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert failed == {"chunks-decode": "1 problem", "sources": "1 problem"}
    assert report["findings"] == [finding]  # found by both checks, listed once


def test_validate_against_names_an_input_that_lacks_a_variable(baked_feedstock, tmp_path):
    feedstock, store = baked_feedstock
    second = sample_sources(feedstock)[1]
    with xr.open_dataset(second) as ds:
        lacking = ds.drop_vars("anom").load()
    lacking.to_netcdf(second)
    proc = arcoforge("validate", store, "--against", NAME, "--json", cwd=tmp_path)
    finding = f"{second.as_uri()}: lacks variable 'anom' that the store has"
    assert error_line(proc, rc=1) == f"error: {store}: 1 of 6 checks failed; first: {finding}"
    assert json.loads(proc.stdout)["findings"] == [finding]  # its other variables are equal


# -- what a bake shows while it runs ---------------------------------------------------

LONG = "an-archive-folder-whose-name-is-long-enough-to-wrap-at-eighty-columns"
PROGRESS = re.compile(r"^(prepare|scan|write|publish) (\d+/\d+ tasks|done), \d+\.\d s$")


def piped(*args, cwd: Path) -> subprocess.Popen:
    """``python -m arcoforge.cli ARGS`` with stdout and stderr piped and the terminal's
    width unset (rich would wrap at 80 columns)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(TERM="dumb", NO_COLOR="1")
    command = [sys.executable, "-m", "arcoforge.cli", *map(str, args)]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def served_feedstock(tmp_path: Path, server_url: str) -> Path:
    """The ``init`` feedstock reading its sample files from ``server_url/LONG/``, retrying
    after 1 to 3 s."""
    feedstock = write_feedstock(tmp_path / NAME)
    (tmp_path / LONG).mkdir()
    for path in sample_sources(feedstock):
        shutil.copy(path, tmp_path / LONG / path.name)
    recipe = feedstock / "recipe.py"
    local = '(HERE / "sample-data" / f"oisst-avhrr-v02r01.{time:%Y%m%d}.nc").as_uri()'
    remote = f'f"{server_url}/{LONG}/oisst-avhrr-v02r01.{{time:%Y%m%d}}.nc"'
    text = recipe.read_text().replace(local, remote)
    recipe.write_text(text.replace("OpenURLWithFSSpec()", "OpenURLWithFSSpec(retry_delay=2)"))
    return feedstock


@pytest.mark.parametrize("prune", [2, 4], ids=["forked-children", "pool"])
def test_retry_warnings_show_as_they_happen_one_line_each(tmp_path, prune):
    # the first attempt at each input fails (HEAD, then GET, answer 500 or 503)
    faults = Faults(error_rate=1.0, max_faults_per_path=2)
    with FileServer(tmp_path, faults=faults) as server:
        feedstock = served_feedstock(tmp_path, server.url)
        urls = [f"{server.url}/{LONG}/{p.name}" for p in sample_sources(feedstock)[:prune]]

        def requests(url: str) -> int:
            return sum(r == url.removeprefix(server.url) for r in list(server.requests))

        args = ("bake", NAME, "--target-root", "out", "--workers", "2", "--prune", prune)
        proc = piped(*args, cwd=tmp_path)
        lines, seen = [], {}  # requests for an input when its retry line was read
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            for url in urls:
                if line.startswith(f"warning: scan of {url}: "):
                    seen[url] = requests(url)
        proc.wait(timeout=120)
        final = {url: requests(url) for url in urls}
    assert proc.returncode == 0, lines
    retry = re.compile(r": HTTP 50[03] [A-Za-z ]+; retry 1 of 5 in \d\.\d s$")
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == prune
    for line, url in zip(sorted(warnings), urls, strict=True):
        assert len(line) > 80 and retry.search(line.removeprefix(f"warning: scan of {url}")), line
    # each line was shown after the failed attempt (HEAD, GET) and before the retry
    assert seen == dict.fromkeys(urls, 2) and final == dict.fromkeys(urls, 4)
    # the rest is plain progress: no bars, no colours
    assert [line for line in lines if line not in warnings and not PROGRESS.match(line)] == []
    assert {line.split()[0] for line in lines if PROGRESS.match(line)} == {
        "prepare",
        "scan",
        "write",
        "publish",
    }


def test_plain_progress_is_a_line_every_interval():
    out = io.StringIO()
    reporter = PlainReporter(out, interval=0)
    reporter.stage_started("scan", 3, "open every input")
    for _ in range(3):
        reporter.advanced("scan")
    reporter.stage_done("scan", 1.25)
    reporter.stage_started("publish", 0, "move the store into place")
    reporter.stage_done("publish", 0.04)
    reporter.event("log", level="WARNING", message="a\nlong   line")
    assert out.getvalue().splitlines() == [
        "scan 1/3 tasks",
        "scan 2/3 tasks",
        "scan 3/3 tasks",
        "scan 3/3 tasks, 1.2 s",
        "publish done, 0.0 s",
        "warning: a long line",
    ]
    quiet = io.StringIO()
    reporter = PlainReporter(quiet, interval=60)
    reporter.stage_started("write", 10, "write regions")
    for _ in range(10):
        reporter.advanced("write")
    reporter.stage_done("write", 2.0)
    assert quiet.getvalue() == "write 10/10 tasks, 2.0 s\n"


def test_json_events_carry_the_run_and_the_time_and_end_with_an_error(tmp_path):
    feedstock = write_feedstock(tmp_path / NAME)
    args = ("bake", NAME, "--target-root", "out", "--workers", "1", "--json")
    events = json_lines(ok(arcoforge(*args, "--prune", "2", cwd=tmp_path)).stdout)
    runs = {e["run"] for e in events}
    assert len(runs) == 1 and all(isinstance(e["time"], float) for e in events)
    (run,) = runs
    assert (tmp_path / "out" / RUNS_FOLDER / f"{run}.json").is_file()
    assert [e["event"] for e in events if e["event"] not in ("task_done", "stage_done")] == [
        "stage_started",
        "stage_started",
        "stage_started",
        "stage_started",
        "summary",
    ]
    # a bake that fails: its last event is the error, with the line printed on stderr
    (sample_sources(feedstock)[2]).unlink()
    proc = arcoforge(*args, cwd=tmp_path)
    line = error_line(proc, rc=1)
    failed = json_lines(proc.stdout)
    assert failed[-1]["event"] == "error" and f"error: {failed[-1]['message']}" == line
    assert (
        line
        == f"error: {sample_sources(feedstock)[1].as_uri().replace('0902', '0903')}: file not found"
    )
    assert len({e["run"] for e in failed}) == 1 and failed[-1]["run"] != run
    record = json.loads((tmp_path / "out" / RUNS_FOLDER / f"{failed[-1]['run']}.json").read_text())
    assert record["status"] == "failed"
    # ... and one that fails before a run starts
    proc = arcoforge(*args, "--recipe", "nope", cwd=tmp_path)
    line = error_line(proc, rc=1)
    (event,) = json_lines(proc.stdout)
    assert event["event"] == "error" and f"error: {event['message']}" == line
    assert isinstance(event["run"], str) and isinstance(event["time"], float)
