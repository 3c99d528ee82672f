"""No credential in any byte arcoforge writes or prints.

Each credential form is required by a real loopback server (arcoforge.testing.httpserver)
and baked with the CLI (a subprocess, JSON and plain output, ``--skip-failed`` with one
missing input, a wrong credential with ``--debug``) and with ``bake()`` (references, other
engines); then every file under the target root, the cache and the run-record state folder,
and everything printed, is searched for the secret: raw, URL-quoted, and for basic auth
base64 of ``user:password``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
import fsspec
import numpy as np
import pytest
import xarray as xr

from arcoforge import OpenWithKerchunk, WriteCombinedReference, bake, pattern_from_file_sequence
from arcoforge.cli.main import friendly
from arcoforge.core.progress import JsonReporter, Reporter, logs_to
from arcoforge.errors import SourceError
from arcoforge.products import make_plan
from arcoforge.references.formats.icechunk import IcechunkFormat
from arcoforge.references.store import open_references
from arcoforge.sources.secrets import (
    basic_credentials,
    hide_userinfo,
    redact,
    remember,
    secret_values,
    show_userinfo,
    without_userinfo,
)
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.compare import assert_same_as_sources
from arcoforge.testing.httpserver import FileServer
from arcoforge.testing.recipes import simple_recipe

pytestmark = pytest.mark.timeout(300)

USER = "alice"
PASSWORD = "Pa55+w0rd/=Q7"  # quoted, plus-quoted and raw forms all differ
TOKEN = "t0ken-Bearer-9Zk"
COOKIE = "c00kie+Val/3x"
QUERY = "q5ecret-Key-77"
WRONG = "wr0ng+Secret-41"
S3_KEY, S3_SECRET = "AKIAARCOFORGEKEY42", "s3+secret/Value=99"
NAME = "creds"


def forms_of(value: str) -> list[bytes]:
    """The forms a secret could be written in."""
    found = {value, quote(value, safe=""), quote_plus(value), quote(value)}
    return [f.encode() for f in found]


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# Each form: what the server requires, the pattern's keyword arguments (as source code for a
# feedstock, with SECRET for the credential) and whether the URL carries it.
FORMS = {
    "url-userinfo": ({"auth": (USER, PASSWORD)}, "{}", True),
    "basic-options": (
        {"auth": (USER, PASSWORD)},
        f"dict(fsspec_open_kwargs={{'username': {USER!r}, 'password': SECRET}})",
        False,
    ),
    "aiohttp-basic-auth": (
        {"auth": (USER, PASSWORD)},
        f"dict(fsspec_open_kwargs={{'client_kwargs': {{'auth': aiohttp.BasicAuth({USER!r}, SECRET)}}}})",
        False,
    ),
    "bearer": (
        {"bearer": TOKEN},
        "dict(fsspec_open_kwargs={'headers': {'Authorization': 'Bearer ' + SECRET}})",
        False,
    ),
    "cookie-header": (
        {"cookies": {"session": COOKIE}},
        "dict(fsspec_open_kwargs={'headers': {'Cookie': 'session=' + SECRET}})",
        False,
    ),
    "cookies": (
        {"cookies": {"session": COOKIE}},
        "dict(fsspec_open_kwargs={'client_kwargs': {'cookies': {'session': SECRET}}})",
        False,
    ),
    "query-string": ({"token": QUERY}, "dict(query_string_secrets={'token': SECRET})", False),
}
SECRET_OF = {
    "url-userinfo": PASSWORD,
    "basic-options": PASSWORD,
    "aiohttp-basic-auth": PASSWORD,
    "bearer": TOKEN,
    "cookie-header": COOKIE,
    "cookies": COOKIE,
    "query-string": QUERY,
}


def needles(secret: str) -> list[bytes]:
    """Every form of ``secret`` (and of the wrong one) that must appear nowhere."""
    found = forms_of(secret) + forms_of(WRONG)
    found += [basic(USER, secret).encode(), basic(USER, WRONG).encode()]
    return found


def leaks(folders, texts, secret: str) -> list[str]:
    """Where any form of ``secret`` appears: files under ``folders``, or ``texts``."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            names = str(path).encode()
            data = path.read_bytes() if path.is_file() else b""
            found += [f"{path}: {n!r}" for n in needles(secret) if n in data or n in names]
    for i, text in enumerate(texts):
        found += [f"output {i}: {n!r}" for n in needles(secret) if n in text.encode()]
    return found


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> list[Path]:
    return write_oisst_archive(tmp_path_factory.mktemp("secrets") / "src", days=4, ny=6, nx=12)


def input_urls(server: FileServer, paths, form: str, secret: str) -> list[str]:
    base = server.url
    if FORMS[form][2]:
        base = base.replace("://", f"://{USER}:{quote(secret, safe='')}@")
    return [f"{base}/{Path(p).name}" for p in paths]


def pattern_kwargs(form: str, secret: str) -> dict:
    return eval(FORMS[form][1], {"aiohttp": aiohttp, "SECRET": secret})


def write_feedstock(folder: Path, urls: list[str], form: str, secret: str) -> Path:
    """A feedstock baking ``urls`` into a Zarr store, with the credential of ``form``."""
    folder.mkdir(parents=True)
    (folder / "meta.yaml").write_text(
        textwrap.dedent(
            f"""\
            title: creds
            description: inputs behind a credential
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
            import aiohttp
            from arcoforge import (
                OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, pattern_from_file_sequence,
            )

            SECRET = {secret!r}
            pattern = pattern_from_file_sequence(
                {urls!r}, "time", nitems_per_file=1, **{FORMS[form][1]}
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


def cli(*args, cwd: Path, state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "ARCOFORGE_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "arcoforge.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("form", list(FORMS))
def test_cli_bakes_write_and_print_no_credential(form, archive, tmp_path):
    secret = SECRET_OF[form]
    state, cache, out = tmp_path / "state", tmp_path / "cache", tmp_path / "out"
    with FileServer(archive[0].parent, **FORMS[form][0]) as server:
        urls = input_urls(server, archive, form, secret)
        missing = urls[1].replace(archive[1].name, "missing.nc")
        feedstock = write_feedstock(tmp_path / "feed", [*urls, missing], form, secret)
        common = ("bake", feedstock, "--target-root", out, "--cache", cache, "--workers", "2")
        # one input is missing: skipped, and named (redacted) in the summary and the manifest
        skipped = cli(*common, "--skip-failed", "--json", cwd=tmp_path, state=state)
        assert skipped.returncode == 0, skipped.stderr
        summary = json.loads(skipped.stdout.splitlines()[-1])
        assert summary["event"] == "summary" and summary["inputs"] == 5
        plain = cli(*common, "--skip-failed", "--force", cwd=tmp_path, state=state)
        assert plain.returncode == 0, plain.stderr
        masked = missing.replace(quote(secret, safe=""), "***")
        assert f"1 input skipped, first {masked}" in plain.stdout, plain.stdout
        # the wrong credential: one error line, also with --debug
        wrong_urls = input_urls(server, archive, form, WRONG)
        wrong = write_feedstock(tmp_path / "wrong", wrong_urls, form, WRONG)
        failed = cli(
            *("bake", wrong, "--target-root", out, "--cache", tmp_path / "cache2", "--debug"),
            cwd=tmp_path,
            state=state,
        )
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[-1]
    base = wrong_urls[0].rpartition("/")[0].replace(quote(WRONG, safe=""), "***")
    status = "401 Unauthorized" if "auth" in FORMS[form][0] else "403 Forbidden"
    pattern = rf"error: {re.escape(base)}/oisst-avhrr-v02r01\.\d{{8}}\.nc: HTTP {status} "
    assert re.fullmatch(pattern + r"\(check credentials\)", line), line
    store = out / f"{NAME}.zarr"
    manifest = json.loads((out / f".{NAME}.zarr.arcoforge" / "manifest.json").read_text())
    assert len(manifest["inputs"]) == 5 and list(manifest["missing"]) == [manifest["inputs"][4]]
    if FORMS[form][2]:  # the URL is kept, its password masked
        assert manifest["inputs"][0] == urls[0].replace(quote(secret, safe=""), "***")
    assert_same_as_sources(_without_missing(store), archive)
    outputs = [p.stdout + p.stderr for p in (skipped, plain, failed)]
    assert leaks([out, cache, tmp_path / "cache2", state], outputs, secret) == []
    assert leaks([feedstock], [], secret)  # the search finds the secret where it is


def _without_missing(store: Path):
    return xr.open_zarr(store).isel(time=slice(0, 4))


# How a reader of references gives each form's credential to fsspec (see docs/credentials.md)
READER_OPTIONS = {
    "url-userinfo": {"client_kwargs": {"auth": aiohttp.BasicAuth(USER, PASSWORD)}},
    "basic-options": {"headers": {"Authorization": f"Basic {basic(USER, PASSWORD)}"}},
    "aiohttp-basic-auth": {"client_kwargs": {"auth": aiohttp.BasicAuth(USER, PASSWORD)}},
    "bearer": {"headers": {"Authorization": f"Bearer {TOKEN}"}},
    "cookie-header": {"headers": {"Cookie": f"session={COOKIE}"}},
    "cookies": {"client_kwargs": {"cookies": {"session": COOKIE}}},
    "query-string": {"params": {"token": QUERY}},
}


def references_equal_sources(url: str, paths, remote_options: dict) -> None:
    src = xr.concat([xr.open_dataset(p).load() for p in paths], dim="time", data_vars="minimal")
    with open_references(url, remote_options=remote_options) as out:
        assert set(out.variables) == set(src.variables)
        for name, var in src.variables.items():
            got = out[name].transpose(*var.dims).values
            np.testing.assert_array_equal(got.astype(var.dtype), var.values, err_msg=name)


@pytest.mark.parametrize("form", list(FORMS))
def test_references_name_inputs_without_credentials(form, archive, tmp_path, capfd, caplog):
    secret = SECRET_OF[form]
    name = "reference.parquet" if list(FORMS).index(form) % 2 else "reference.json"
    with FileServer(archive[0].parent, **FORMS[form][0]) as server:
        urls = input_urls(server, archive, form, secret)
        pattern = pattern_from_file_sequence(urls, "time", **pattern_kwargs(form, secret))
        opener = OpenWithKerchunk(inline_threshold=0)  # every chunk read from the inputs
        recipe = pattern | opener | WriteCombinedReference("ref", output_file_name=name)
        result = bake(recipe, tmp_path / "out", cache=str(tmp_path / "cache"), workers=2)
        assert result.stats["validated_inputs"] == 2
        references_equal_sources(result.url, archive, READER_OPTIONS[form])
        # without the credential the inputs cannot be read through the references
        with pytest.raises(Exception):  # noqa: B017 - fsspec raises what aiohttp raised
            references_equal_sources(result.url, archive, {})
    store = Path(result.url)
    manifest = json.loads((store.parent / f".{store.name}.arcoforge/manifest.json").read_text())
    assert manifest["inputs"][0] == urls[0].replace(quote(secret, safe=""), "***")
    if name.endswith(".json"):  # inputs are named by their URL without the credential
        plain = urls[0].replace(f"{USER}:{quote(secret, safe='')}@", "")
        assert f'"{plain}"'.encode() in store.read_bytes()
    printed = capfd.readouterr()
    outputs = [printed.out, printed.err, caplog.text, repr(result)]
    assert leaks([tmp_path, os.environ["ARCOFORGE_STATE_DIR"]], outputs, secret) == []


class InterruptDuring(Reporter):
    """Acts as a user pressing Ctrl-C once ``stage`` is under way."""

    def __init__(self, stage: str):
        self.stage = stage

    def advanced(self, name: str) -> None:
        if name == self.stage:
            raise KeyboardInterrupt


def all_at_once(server: FileServer, paths) -> tuple[list[str], dict]:
    """URLs with a password in them, and pattern options adding a query secret and a
    cookie: every credential ``all_forms_server`` requires."""
    urls = [
        u.replace("://", f"://{USER}:{quote(PASSWORD, safe='')}@") for u in served(server, paths)
    ]
    options = {
        "query_string_secrets": {"token": QUERY},
        "fsspec_open_kwargs": {"client_kwargs": {"cookies": {"session": COOKIE}}},
    }
    return urls, options


def served(server: FileServer, paths) -> list[str]:
    return [f"{server.url}/{Path(p).name}" for p in paths]


def all_forms_server(root: Path) -> FileServer:
    return FileServer(root, auth=(USER, PASSWORD), token=QUERY, cookies={"session": COOKIE})


def all_leaks(folders, texts) -> list[str]:
    return [leak for secret in (PASSWORD, QUERY, COOKIE) for leak in leaks(folders, texts, secret)]


@pytest.mark.parametrize("engine", ["beam", "dask", "spark"])
def test_other_engines_write_and_print_no_credential(engine, archive, tmp_path, capfd, caplog):
    with all_forms_server(archive[0].parent) as server:
        urls, options = all_at_once(server, archive)
        missing = urls[0].replace(archive[0].name, "missing.nc")
        recipe = simple_recipe([*urls, missing], **options)
        result = bake(
            recipe,
            tmp_path / "out",
            cache=str(tmp_path / "cache"),
            workers=2,
            engine=engine,
            skip_failed=True,
        )
    assert result.stats["missing_inputs"] == [missing.replace(quote(PASSWORD, safe=""), "***")]
    assert_same_as_sources(_without_missing(Path(result.url)), archive)
    printed = capfd.readouterr()
    outputs = [printed.out, printed.err, caplog.text, repr(result)]
    assert all_leaks([tmp_path, os.environ["ARCOFORGE_STATE_DIR"]], outputs) == []


def test_an_interrupted_bake_stages_no_credential(archive, tmp_path, capfd, caplog):
    with all_forms_server(archive[0].parent) as server:
        urls, options = all_at_once(server, archive)
        recipe = simple_recipe(urls, **options)
        target = tmp_path / "out"
        with pytest.raises(KeyboardInterrupt):
            bake(recipe, target, workers=1, reporter=InterruptDuring("write"))
        # what the interrupted bake staged (its ledger, the scan's state) holds no secret
        assert (target / f".{recipe.writer.store_name}.arcoforge" / "staging").exists()
        assert all_leaks([target], []) == []
        result = bake(recipe, target, workers=1)  # resumes, with the credentials
    assert_same_as_sources(result.url, archive)
    printed = capfd.readouterr()
    outputs = [printed.out, printed.err, caplog.text]
    assert all_leaks([tmp_path, os.environ["ARCOFORGE_STATE_DIR"]], outputs) == []


def test_an_object_store_targets_credentials_are_written_nowhere(archive, s3, tmp_path):
    """The target's key and secret (moto takes any) appear in no object of the bucket,
    no run record and no line printed."""
    endpoint = s3["client_kwargs"]["endpoint_url"]
    options = {**s3, "key": S3_KEY, "secret": S3_SECRET}
    root = f"s3://bakery/test_secrets/{tmp_path.name}"
    state = tmp_path / "state"
    with FileServer(archive[0].parent, auth=(USER, PASSWORD)) as server:
        urls = input_urls(server, archive, "url-userinfo", PASSWORD)
        feedstock = write_feedstock(tmp_path / "feed", urls, "url-userinfo", PASSWORD)
        flags = ["--storage-option", f"key={S3_KEY}", "--storage-option", f"secret={S3_SECRET}"]
        flags += ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
        flags += ["--storage-option", "client_kwargs.region_name=eu-west-1"]
        args = (feedstock, *flags, "--cache", tmp_path / "c")
        baked = cli("bake", "--target-root", root, *args, "--json", cwd=tmp_path, state=state)
        assert baked.returncode == 0, baked.stderr
        # a failing bake (a bucket that does not exist): its error names no credential either
        elsewhere = "s3://no-such-bucket/creds"
        bad = cli("bake", "--target-root", elsewhere, *args, cwd=tmp_path, state=state)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: "), bad.stderr
    fs = fsspec.filesystem("s3", **options)
    objects = fs.find(root)
    assert f"{root}/{NAME}.zarr/zarr.json".removeprefix("s3://") in objects
    folder = tmp_path / "bucket"
    for key in objects:
        copy = folder / key.removeprefix(root.removeprefix("s3://") + "/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(fs.cat_file(key))
    outputs = [baked.stdout, baked.stderr, bad.stdout, bad.stderr]
    for secret in (S3_SECRET, S3_KEY, PASSWORD):
        assert leaks([folder, state], outputs, secret) == []


# -- arcoforge.secrets and the server's checks ----------------------------------------


def test_a_url_password_is_masked_and_put_back_only_for_the_request():
    url, userinfo = hide_userinfo("https://bob:p%2Fw%40rd@host:8443/a/b.nc?v=1")
    assert url == "https://bob:***@host:8443/a/b.nc?v=1"
    assert userinfo == {"bob:***@host:8443": "bob:p%2Fw%40rd@host:8443"}
    assert show_userinfo(url, userinfo) == "https://bob:p%2Fw%40rd@host:8443/a/b.nc?v=1"
    assert show_userinfo("https://eve:***@other/a.nc", userinfo) == "https://eve:***@other/a.nc"
    assert without_userinfo(url) == "https://host:8443/a/b.nc?v=1"
    assert basic_credentials(url, userinfo) == ("bob", "p/w@rd")
    for plain in ("https://host/a.nc", "/data/a@b:c.nc", "s3://bucket/key.nc"):
        assert hide_userinfo(plain) == (plain, {})
    # the pattern makes its inputs with the password masked, and keeps it for the fetch
    pattern = pattern_from_file_sequence(["https://bob:pw-1234@h/a.nc", "https://h/b.nc"], "t")
    assert [i.url for i in pattern.inputs()] == ["https://bob:***@h/a.nc", "https://h/b.nc"]
    assert pattern.userinfo == {"bob:***@h": "bob:pw-1234@h"}


def test_secret_values_finds_every_credential_form():
    found = set(
        secret_values(
            {"token": "query-1"},
            {
                "username": "bob",
                "password": "pw-2222",
                "headers": {"Authorization": "Bearer bearer-3", "Cookie": "a=cookie-4; b=cookie-5"},
                "client_kwargs": {
                    "cookies": {"session": "cookie-6"},
                    "auth": aiohttp.BasicAuth("eve", "pw-7777"),
                },
            },
            {"al:***@h": "al:pw%2F8@h"},
        )
    )
    wanted = {"query-1", "pw-2222", "bearer-3", "cookie-4", "cookie-5", "cookie-6", "pw-7777"}
    wanted |= {"pw%2F8", "pw/8", basic("bob", "pw-2222"), basic("eve", "pw-7777")}
    wanted |= {basic("al", "pw/8")}
    assert wanted <= found
    assert not {"bob", "eve", "al", "Bearer"} & found
    assert redact("Authorization: Bearer bearer-3", found) == "Authorization: ***"


@pytest.mark.parametrize(
    ("server", "good", "bad"),
    [
        ({"bearer": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer x"}),
        ({"cookies": {"s": COOKIE}}, {"Cookie": f'a=1; s="{COOKIE}"'}, {"Cookie": "s=other"}),
    ],
    ids=["bearer", "cookies"],
)
def test_file_server_checks_bearer_tokens_and_cookies(archive, server, good, bad):
    with FileServer(archive[0].parent, **server) as running:
        url = f"{running.url}/{archive[0].name}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=good)) as answer:
            assert answer.read() == archive[0].read_bytes()
        for headers in (bad, {}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers))
            assert refused.value.code == 403


def test_the_cli_masks_remembered_secrets_in_errors_logs_and_debug_tracebacks(capsys):
    """A safety net behind every mask: whatever a library puts in an error or a log line
    (a chained cause's URL with its query string, say), the CLI prints it masked."""
    remember([QUERY])

    @friendly
    def fails():
        logging.getLogger("arcoforge").warning("retrying https://h/a.nc?token=%s", QUERY)
        try:
            raise ValueError(f"401, url='https://h/a.nc?token={QUERY}'")
        except ValueError as exc:
            raise SourceError(f"https://h/a.nc: failed: {exc}") from exc

    reporter = JsonReporter()
    with pytest.raises(SystemExit) as exited, logs_to(reporter):
        fails(debug=True)
    assert exited.value.code == 1
    printed = capsys.readouterr()
    assert QUERY not in printed.out + printed.err
    assert json.loads(printed.out)["message"] == "retrying https://h/a.nc?token=***"
    assert "ValueError: 401, url='https://h/a.nc?token=***'" in printed.err  # the cause
    assert printed.err.splitlines()[-1] == (
        "error: https://h/a.nc: failed: 401, url='https://h/a.nc?token=***'"
    )


def test_an_icechunk_commit_message_names_inputs_masked(tmp_path):
    """The message an Icechunk bake commits with, from its plan (a real Icechunk bake of
    HTTP inputs cannot run here: Icechunk drops the port of a virtual chunk's URL)."""
    urls = [f"https://{USER}:{quote(PASSWORD, safe='')}@host/a{i}.nc" for i in range(3)]
    pattern = pattern_from_file_sequence(urls, "time", query_string_secrets={"token": QUERY})
    recipe = pattern | OpenWithKerchunk() | WriteCombinedReference("ref")
    plan = make_plan(recipe, f"icechunk://{tmp_path / 'ic'}", cache=None, workers=1)
    assert isinstance(plan.store, IcechunkFormat)
    assert plan.commit_message() == (
        f"arcoforge bake of ref: 3 inputs, https://{USER}:***@host/a0.nc .. "
        f"https://{USER}:***@host/a2.nc"
    )
