"""Errors keep their cause: ``arcoforge bake`` prints one line, ``--debug`` the whole chain
down to the library's error (from a worker process too), and no secret of the bake in
either, nor in the run record."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest

from arcoforge import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, pattern_from_file_sequence
from arcoforge import bake as run_bake
from arcoforge.core.statefile import dumps_binary, loads_binary
from arcoforge.core.tasks import Failed, call, unwrap
from arcoforge.errors import ArcoforgeError, SourceError, Traced, format_chain
from arcoforge.sources.secrets import remember
from arcoforge.testing.archives import write_corrupt_file, write_oisst_archive
from arcoforge.testing.httpserver import FileServer

pytestmark = pytest.mark.timeout(300)

NAME = "chains"
USER = "alice"
PASSWORD = "Pa55+w0rd/=Q7"
TOKEN = "q5ecret-Key-77"  # what the server wants
WRONG = "wr0ng+Secret-41"  # what the recipe gives
CAUSED = "The above exception was the direct cause of the following exception:"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> list[Path]:
    return write_oisst_archive(tmp_path_factory.mktemp("chains") / "src", days=5, ny=6, nx=12)


def write_feedstock(folder: Path, urls: list[str], pattern_kwargs: str = "{}") -> Path:
    """A feedstock baking ``urls`` along time into a Zarr store."""
    folder.mkdir(parents=True)
    (folder / "meta.yaml").write_text(
        textwrap.dedent(
            f"""\
            title: chains
            description: inputs that fail
            recipes:
              - id: {NAME}
                object: "recipe:recipe"
            provenance:
              providers:
                - name: test
                  roles: [producer]
              license: CC-BY-4.0
            maintainers:
              - name: Test
                github: test
            """
        )
    )
    (folder / "recipe.py").write_text(
        textwrap.dedent(
            f"""\
            from arcoforge import (
                OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, pattern_from_file_sequence,
            )

            pattern = pattern_from_file_sequence(
                {urls!r}, "time", nitems_per_file=1, **{pattern_kwargs}
            )
            recipe = (
                pattern
                | OpenURLWithFSSpec(retry_delay=0.01, retries=1)
                | OpenWithXarray()
                | StoreToZarr("{NAME}.zarr", target_chunks={{"time": 2}})
            )
            """
        )
    )
    return folder


def bake(feedstock: Path, tmp: Path, *flags) -> tuple[int, str, str, int]:
    """``arcoforge bake`` in a subprocess: its exit code, stdout, stderr and pid."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env["ARCOFORGE_STATE_DIR"] = str(tmp / "state")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # the repository
    args = ("bake", feedstock, "--target-root", tmp / "out", "--cache", tmp / "cache", *flags)
    with subprocess.Popen(
        [sys.executable, "-m", "arcoforge.cli", *map(str, args)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err, proc.pid


def the_line(stderr: str) -> str:
    """The one ``error:`` line, last, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def failures(tmp: Path) -> list[str]:
    """The ``failures`` of the run records of the bakes, as the state folder has them."""
    records = sorted((tmp / "state").rglob("*.json"))
    return [f for r in records for f in json.loads(r.read_text())["failures"]]


# -- a corrupt input: the chain down to the netCDF library's error ----------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_debug_shows_the_chain_down_to_the_netcdf_error(archive, tmp_path, workers):
    """With 2 workers the six inputs are scanned in forked workers of the local engine:
    the chain crosses back to the driver as text, naming the process it came from."""
    bad = write_corrupt_file(tmp_path / "bad" / "oisst-avhrr-v02r01.19810906.nc")
    feedstock = write_feedstock(tmp_path / "feed", [str(p) for p in [*archive, bad]])
    rc, _, plain, _ = bake(feedstock, tmp_path, "--workers", workers)
    assert rc == 1
    line = the_line(plain)
    assert line == (
        f"error: {bad}: cannot open as netcdf4: OSError: [Errno -101] NetCDF: HDF error: '{bad}'"
    )
    rc, _, debug, pid = bake(feedstock, tmp_path, "--workers", workers, "--debug")
    assert rc == 1
    assert debug.splitlines()[-1] == line
    # oldest first: the netCDF library's error, then arcoforge's naming the file
    library = debug.index(f"\nOSError: [Errno -101] NetCDF: HDF error: '{bad}'\n")
    assert "in netCDF4._netCDF4.Dataset.__init__" in debug[:library]
    ours = debug.index(f"arcoforge.errors.SourceError: {line.removeprefix('error: ')}\n")
    assert library < debug.index(CAUSED, library) < ours
    worker = [ln for ln in debug.splitlines() if ln.startswith("In process ")]
    if workers == 1:
        assert worker == []
    else:  # the scan ran in a worker: its traceback came back with the error
        (header,) = worker
        assert header != f"In process {pid}:" and debug.index(header) < library
    assert failures(tmp_path) == [f"during scan: {line.removeprefix('error: ')}"] * 2


@pytest.mark.parametrize("engine", ["dask", "spark", "beam"])
def test_other_engines_bring_back_the_chain_of_a_task_error(archive, tmp_path, engine):
    """The scan of a corrupt input fails on a worker of the engine: the error raised here
    is caused by the worker's traceback, as text, down to the netCDF library's error."""
    bad = write_corrupt_file(tmp_path / "bad" / "oisst-avhrr-v02r01.19810906.nc")
    recipe = (
        pattern_from_file_sequence([str(p) for p in [*archive, bad]], "time", nitems_per_file=1)
        | OpenWithXarray()
        | StoreToZarr("out.zarr", target_chunks={"time": 2})
    )
    with pytest.raises(ArcoforgeError) as raised:
        run_bake(recipe, tmp_path / "out", workers=2, engine=engine)
    assert str(bad) in str(raised.value) and "NetCDF: HDF error" in str(raised.value)
    cause = raised.value.__cause__
    assert type(cause) is Traced and not cause.text.startswith(f"In process {os.getpid()}:")
    library = cause.text.index(f"\nOSError: [Errno -101] NetCDF: HDF error: '{bad}'\n")
    assert "in netCDF4._netCDF4.Dataset.__init__" in cause.text[:library]
    assert CAUSED in cause.text[library:]
    chain = format_chain(raised.value)
    assert chain.index(cause.text) < chain.index(CAUSED, library + 1)


# -- secrets in a chained cause: masked wherever the chain is shown ----------------------


def forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote(secret)]


@pytest.mark.parametrize("form", ["url-userinfo", "query-string"])
def test_a_chained_http_error_shows_its_type_and_no_secret(archive, tmp_path, form):
    """The server refuses the recipe's credential: fsspec raises FileNotFoundError from
    aiohttp's ClientResponseError, whose message holds the URL as requested (with the
    password, or the query string's secret)."""
    if form == "url-userinfo":
        server, kwargs = FileServer(archive[0].parent, auth=(USER, PASSWORD)), "{}"
    else:
        server = FileServer(archive[0].parent, token=TOKEN)
        kwargs = f"dict(query_string_secrets={{'token': {WRONG!r}}})"
    with server:
        base = server.url
        if form == "url-userinfo":
            base = base.replace("://", f"://{USER}:{quote(WRONG, safe='')}@")
        urls = [f"{base}/{p.name}" for p in archive]
        feedstock = write_feedstock(tmp_path / "feed", urls, kwargs)
        rc, _, plain, _ = bake(feedstock, tmp_path)
        assert rc == 1
        rc, _, debug, _ = bake(feedstock, tmp_path, "--debug")
        assert rc == 1
        rc, events, _, _ = bake(feedstock, tmp_path, "--json")
        assert rc == 1
        assert len(server.requests) >= 3  # it was asked, with the wrong credential
    status = "401 Unauthorized" if form == "url-userinfo" else "403 Forbidden"
    masked = [url.replace(quote(WRONG, safe=""), "***") for url in urls]
    lines = {f"{url}: HTTP {status} (check credentials)" for url in masked}  # the first to fail
    assert the_line(plain).removeprefix("error: ") in lines
    assert debug.splitlines()[-1].removeprefix("error: ") in lines
    cause = debug.index(f"aiohttp.client_exceptions.ClientResponseError: {status[:3]}, ")
    assert "FileNotFoundError: " in debug[cause:] and CAUSED in debug[cause:]
    if form == "query-string":  # its URL as requested, the secret masked
        assert "?token=***'" in debug[cause:].splitlines()[0]
    error = json.loads(events.splitlines()[-1])
    assert error["event"] == "error" and error["message"] in lines
    record = failures(tmp_path)
    assert len(record) == 3 and all(f.partition(": ")[2] in lines for f in record), record
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "feed" not in p.parts]
    assert len(written) >= 3  # the run records, at least
    for needle in forms(WRONG):
        assert needle not in plain + debug + events, needle
        assert not [data for data in written if needle.encode() in data], needle
    given = (tmp_path / "feed" / "recipe.py").read_text()
    assert any(needle in given for needle in forms(WRONG))  # the search finds it where it is


def test_the_python_api_s_chain_holds_no_secret(archive, tmp_path):
    """``bake()`` raises an error whose cause is the library's, as text with the secret
    masked: Python's own traceback printing shows the chain, not the secret."""
    with FileServer(archive[0].parent, token=TOKEN) as server:
        urls = [f"{server.url}/{p.name}" for p in archive]
        recipe = (
            pattern_from_file_sequence(urls, "time", 1, query_string_secrets={"token": WRONG})
            | OpenURLWithFSSpec(retry_delay=0.01, retries=1)
            | OpenWithXarray()
            | StoreToZarr("out.zarr", target_chunks={"time": 2})
        )
        with pytest.raises(SourceError) as raised:
            run_bake(recipe, tmp_path / "out", cache=str(tmp_path / "cache"), workers=1)
    printed = "".join(traceback.format_exception(raised.value))
    assert "aiohttp.client_exceptions.ClientResponseError: 403, " in printed
    assert "?token=***'" in printed and CAUSED in printed
    assert not [needle for needle in forms(WRONG) if needle in printed]


# -- the chain across processes ---------------------------------------------------------


def _fails(url: str):
    try:
        raise ValueError(f"401, url='{url}'")
    except ValueError as exc:
        raise SourceError("https://h/a.nc: refused") from exc


class _Unpicklable(Exception):
    def __init__(self, message: str, handle):
        super().__init__(message)
        self.handle = handle


def _fails_unpicklably(url: str):
    raise _Unpicklable(f"cannot read {url}", handle=lambda: None)


def test_a_task_error_crosses_processes_with_its_chain_masked():
    """What a worker sends back (pickled) holds its chain as text, each secret the worker
    process knows masked; the driver raises the error caused by it."""
    remember([TOKEN])
    sent = pickle.dumps(call(_fails, f"https://h/a.nc?token={TOKEN}"))
    assert TOKEN.encode() not in sent
    with pytest.raises(SourceError) as raised:
        unwrap(pickle.loads(sent))
    cause = raised.value.__cause__
    assert isinstance(cause, Traced)
    assert cause.text.startswith(f"In process {os.getpid()}:\nTraceback")
    assert "ValueError: 401, url='https://h/a.nc?token=***'\n" in cause.text
    assert cause.text.rstrip().endswith("SourceError: https://h/a.nc: refused")
    chain = format_chain(raised.value)
    assert chain.index("ValueError: 401") < chain.index(CAUSED) < chain.index("in unwrap")


def test_an_error_that_does_not_pickle_comes_back_as_its_text():
    remember([TOKEN])
    result = pickle.loads(pickle.dumps(call(_fails_unpicklably, f"https://h/?token={TOKEN}")))
    assert isinstance(result, Failed) and type(result.error) is Traced
    assert str(result.error) == "_Unpicklable: cannot read https://h/?token=***"
    assert result.error.text.rstrip().endswith("_Unpicklable: cannot read https://h/?token=***")
    assert TOKEN not in result.error.text


def test_a_task_error_in_a_state_file_keeps_its_chain():
    """The beam engine carries its final state (a failed task's error, say) as a state
    file, not a pickle: the chain is kept in it, as text."""
    failed = call(_fails, "https://h/a.nc")
    data = dumps_binary(failed, "outcome", (Failed,))
    back = loads_binary(data, "/x/outcome", "outcome", (Failed,))
    assert type(back.error) is SourceError and str(back.error) == "https://h/a.nc: refused"
    cause = back.error.__cause__
    assert type(cause) is Traced and cause.text == failed.error.__cause__.text
    assert "ValueError: 401, url='https://h/a.nc'\n" in cause.text
