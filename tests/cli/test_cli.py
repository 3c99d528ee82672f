"""The ``arcoforge`` command, run as a real subprocess: init, lint, bake, demo, help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import xarray as xr
import yaml

from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.testing.cli import NAME, arcoforge, error_line, json_lines, ok, sample_sources
from arcoforge.testing.compare import assert_same_as_sources
from arcoforge.testing.httpserver import Faults, FileServer

# -- init, lint, bake ----------------------------------------------------------------


def test_init_writes_a_feedstock_that_lints_and_bakes(feedstock, tmp_path):
    assert {p.name for p in feedstock.iterdir()} >= {"meta.yaml", "recipe.py", "sample-data"}
    assert len(sample_sources(feedstock)) == 4

    lint = ok(arcoforge("lint", NAME, cwd=tmp_path))
    assert "ok  meta.yaml" in lint.stdout and f"recipe {NAME}: 4 inputs" in lint.stdout

    baked = ok(arcoforge("bake", NAME, "--target-root", "out", "--workers", "2", cwd=tmp_path))
    store = tmp_path / "out" / f"{NAME}.zarr"
    assert str(store) in baked.stdout
    out, _ = assert_same_as_sources(str(store), sample_sources(feedstock))
    assert dict(out.sizes) == {"time": 4, "lat": 36, "lon": 72}
    # only the published store is left under the target root
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        RUNS_FOLDER,
        f".{NAME}.zarr.arcoforge",
        f"{NAME}.zarr",
    ]


def test_init_refuses_a_folder_that_is_not_empty(feedstock, tmp_path):
    line = error_line(arcoforge("init", NAME, cwd=tmp_path), rc=1)
    assert NAME in line and "already exists" in line and "--force" in line


def test_bake_prune_with_json_lines(feedstock, tmp_path):
    proc = ok(
        arcoforge(
            "bake",
            NAME,
            "--target-root",
            "out",
            "--prune",
            "2",
            "--json",
            "--workers",
            "1",
            cwd=tmp_path,
        )
    )
    events = json_lines(proc.stdout)
    summary = events[-1]
    assert summary["event"] == "summary" and summary["recipe"] == NAME
    kept = sample_sources(feedstock)[:2]
    store = tmp_path / "out" / f"{NAME}.zarr"
    out, _ = assert_same_as_sources(str(store), kept)
    assert summary["url"] == str(store)
    assert summary["inputs"] == 2
    assert summary["dims"] == {"time": 2, "lat": 36, "lon": 72} == dict(out.sizes)
    assert summary["bytes_in"] == sum(p.stat().st_size for p in kept)
    decoded = xr.open_mfdataset(kept)  # the sources' decoded bytes, however stored
    assert summary["bytes_decoded"] == sum(v.nbytes for v in decoded.data_vars.values())
    assert summary["validated_inputs"] == 2
    started = {e["stage"]: e["tasks"] for e in events if e["event"] == "stage_started"}
    assert list(started) == ["prepare", "scan", "write", "publish"]
    assert started["scan"] == 2
    done = {e["stage"]: e["done"] for e in events if e["event"] == "task_done"}
    assert all(done.get(stage, 0) == n for stage, n in started.items())


def serve_inputs(feedstock: Path, server: FileServer) -> None:
    """Point the feedstock's recipe at its sample data on ``server``."""
    recipe = feedstock / "recipe.py"
    local = '(HERE / "sample-data" / f"oisst-avhrr-v02r01.{time:%Y%m%d}.nc").as_uri()'
    remote = f'f"{server.url}/oisst-avhrr-v02r01.{{time:%Y%m%d}}.nc"'
    recipe.write_text(recipe.read_text().replace(local, remote))


@pytest.mark.parametrize("as_json", [True, False])
def test_worker_log_lines_are_shown_naming_the_task(feedstock, tmp_path, as_json):
    # the first attempt at each input fails (HEAD, then GET, answer 500 or 503): one retry
    faults = Faults(error_rate=1.0, max_faults_per_path=2)
    with FileServer(feedstock / "sample-data", faults=faults) as server:
        serve_inputs(feedstock, server)
        args = ("bake", NAME, "--target-root", "out", "--prune", "3", "--workers", "2")
        proc = ok(arcoforge(*args, *["--json"] * as_json, cwd=tmp_path))
        urls = [f"{server.url}/{p.name}" for p in sample_sources(feedstock)[:3]]
    if as_json:
        logs = [e for e in json_lines(proc.stdout) if e["event"] == "log"]
        assert {e["level"] for e in logs} == {"WARNING"}
        lines = [e["message"] for e in logs]
    else:
        lines = [line.removeprefix("warning: ") for line in proc.stderr.splitlines()]
    for url in urls:  # logged by a worker, shown here with the task that logged it
        assert sum(line.startswith(f"scan of {url}: HTTP 50") for line in lines) == 1
    assert_same_as_sources(str(tmp_path / "out" / f"{NAME}.zarr"), sample_sources(feedstock)[:3])


def test_dry_run_prints_the_plan_and_writes_nothing(feedstock, tmp_path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    table = ok(arcoforge("bake", NAME, "--target-root", "out", "--dry-run", cwd=tmp_path))
    for stage, tasks in [("scan", 4), ("write", None), ("publish", 0)]:
        row = re.search(rf"^\W*{stage}\W+(\d+)\b", table.stdout, re.MULTILINE)
        assert row, f"{stage} missing from\n{table.stdout}"
        if tasks is not None:
            assert int(row.group(1)) == tasks, table.stdout
    assert "time=4 lat=36 lon=72" in table.stdout

    plan = json_lines(
        ok(
            arcoforge("bake", NAME, "--target-root", "out", "--dry-run", "--json", cwd=tmp_path)
        ).stdout
    )
    assert [e["event"] for e in plan] == ["plan"]
    info = plan[0]
    assert info["inputs"] == 4 and info["dims"] == {"time": 4, "lat": 36, "lon": 72}
    tasks = {s["stage"]: s["tasks"] for s in info["stages"]}
    assert list(tasks) == ["prepare", "scan", "write", "publish"]
    assert tasks["scan"] == 4 and tasks["write"] >= 1 and tasks["publish"] == 0
    assert info["variables"] == ["anom", "err", "ice", "lat", "lon", "sst", "time"]

    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "out").exists()


# -- config files --------------------------------------------------------------------


def test_config_file_sets_target_root_workers_and_prune(feedstock, tmp_path):
    config = tmp_path / "bake.yaml"
    config.write_text(
        yaml.safe_dump({"target_root": str(tmp_path / "cfg-out"), "workers": 2, "prune": 3})
    )
    proc = ok(arcoforge("bake", NAME, "--config", config, "--json", cwd=tmp_path))
    summary = json_lines(proc.stdout)[-1]
    store = tmp_path / "cfg-out" / f"{NAME}.zarr"
    assert summary["url"] == str(store) and summary["inputs"] == 3
    assert_same_as_sources(str(store), sample_sources(feedstock)[:3])


def test_bake_and_validate_on_an_object_store_given_storage_options(
    feedstock, tmp_path, s3, bucket
):
    # the config file gives some options, flags the others (nested by dotted keys)
    config = tmp_path / "bake.yaml"
    options = {"key": "testing", "client_kwargs": {"region_name": "eu-west-1"}}
    config.write_text(yaml.safe_dump({"storage_options": options}))
    endpoint = s3["client_kwargs"]["endpoint_url"]
    flags = ["--storage-option", "secret=testing"]
    flags += ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    proc = ok(
        arcoforge(
            "bake",
            NAME,
            "--target-root",
            bucket,
            "--config",
            config,
            *flags,
            "--json",
            cwd=tmp_path,
        )
    )
    url = f"{bucket}/{NAME}.zarr"
    assert json_lines(proc.stdout)[-1]["url"] == url
    assert_same_as_sources(xr.open_zarr(url, storage_options=s3), sample_sources(feedstock))
    fs = fsspec.filesystem("s3", **s3)
    (record,) = fs.glob(f"{bucket}/{RUNS_FOLDER}/*.json")
    args = json.loads(fs.cat_file(record))["args"]
    assert "secret=***" in args and "testing" not in json.dumps(args), args

    flags += ["--storage-option", "key=testing"]
    flags += ["--storage-option", "client_kwargs.region_name=eu-west-1"]
    report = ok(arcoforge("validate", url, *flags, "--json", cwd=tmp_path))
    assert json.loads(report.stdout)["ok"] is True


@pytest.mark.parametrize(
    ("flags", "cause"),
    [
        (["novalue"], "'novalue' is not KEY=VALUE"),
        (["=3"], "'=3' is not KEY=VALUE"),
        (["anon=true", "anon.deep=1"], "'anon' of 'anon.deep=1' is not a group of options"),
    ],
)
def test_a_bad_storage_option_is_one_line_naming_it(feedstock, tmp_path, flags, cause):
    args = [a for flag in flags for a in ("--storage-option", flag)]
    line = error_line(arcoforge("bake", NAME, "--target-root", "out", *args, cwd=tmp_path), rc=2)
    assert line == f"error: Invalid value for --storage-option: {cause}"
    assert not (tmp_path / "out").exists()


def test_storage_option_values_are_json_when_they_are_json():
    from arcoforge.cli.main import storage_options

    flags = ("anon=true", "n=3", "name=eu-west-1", "code=0123", 'quoted="3"', "a.b.c=x")
    got = storage_options(flags, {"a": {"b": {"d": 1}}, "n": 1})
    assert got == {
        "anon": True,
        "n": 3,
        "name": "eu-west-1",
        "code": "0123",
        "quoted": "3",
        "a": {"b": {"c": "x", "d": 1}},
    }


def test_config_file_with_an_unknown_key_fails_naming_it(feedstock, tmp_path):
    config = tmp_path / "bake.yaml"
    config.write_text("target_root: out\nwrokers: 2\n")
    line = error_line(arcoforge("bake", NAME, "--config", config, cwd=tmp_path), rc=1)
    assert "bake.yaml" in line and "wrokers" in line
    assert not (tmp_path / "out").exists()


# -- broken feedstocks ---------------------------------------------------------------


def drop_provenance(folder: Path) -> tuple[str, ...]:
    meta = yaml.safe_load((folder / "meta.yaml").read_text())
    del meta["provenance"]
    (folder / "meta.yaml").write_text(yaml.safe_dump(meta))
    return ("meta.yaml", "provenance", "required")


def break_yaml(folder: Path) -> tuple[str, ...]:
    path = folder / "meta.yaml"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("- id:"))
    lines.insert(at + 1, "   object: misindented")
    path.write_text("\n".join(lines) + "\n")
    return ("meta.yaml", f"line {at + 2}", "not valid YAML")


def name_missing_object(folder: Path) -> tuple[str, ...]:
    meta = yaml.safe_load((folder / "meta.yaml").read_text())
    meta["recipes"][0]["object"] = "recipe:no_such_recipe"
    (folder / "meta.yaml").write_text(yaml.safe_dump(meta))
    return ("recipe.py", "no object 'no_such_recipe'", NAME)


def break_recipe_syntax(folder: Path) -> tuple[str, ...]:
    path = folder / "recipe.py"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("def make_url"))
    lines[at] = "def make_url(time:"
    path.write_text("\n".join(lines) + "\n")
    return ("recipe.py", f"line {at + 1}", "SyntaxError")


BREAKAGES = [drop_provenance, break_yaml, name_missing_object, break_recipe_syntax]


@pytest.mark.parametrize("command", ["lint", "bake"])
@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__)
def test_broken_feedstock_gives_one_error_line(feedstock, tmp_path, breakage, command):
    needles = breakage(feedstock)
    extra = ["--target-root", "out"] if command == "bake" else []
    line = error_line(arcoforge(command, NAME, *extra, cwd=tmp_path), rc=1)
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(feedstock, tmp_path):
    needles = break_recipe_syntax(feedstock)
    proc = arcoforge("lint", NAME, "--debug", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error:") and all(n in last for n in needles)


def test_bake_failure_names_the_missing_file(feedstock, tmp_path):
    recipe = feedstock / "recipe.py"
    recipe.write_text(recipe.read_text().replace("periods=4", "periods=5"))
    ok(arcoforge("lint", NAME, cwd=tmp_path))  # the recipe itself is fine
    proc = arcoforge("bake", NAME, "--target-root", "out", "--workers", "2", cwd=tmp_path)
    line = error_line(proc, rc=1)
    assert "sample-data/oisst-avhrr-v02r01.19810905.nc" in line and "not found" in line
    assert not (tmp_path / "out" / f"{NAME}.zarr").exists()


# -- demo and help -------------------------------------------------------------------


def test_demo_bakes_a_served_archive(tmp_path):
    folder = tmp_path / "demo"
    proc = ok(arcoforge("demo", "--dir", folder, "--days", "3", "--workers", "2", cwd=tmp_path))
    assert "http://127.0.0.1:" in proc.stdout and "checked: all 3 days" in proc.stdout
    paths = sorted((folder / "source").glob("*.nc"))
    assert len(paths) == 3
    out, _ = assert_same_as_sources(str(folder / "oisst.zarr"), paths)
    assert dict(out.sizes) == {"time": 3, "lat": 360, "lon": 720}
    with xr.open_dataset(paths[0]) as first:
        assert out.sst.attrs["units"] == first.sst.attrs["units"]


def test_help_explains_commands_and_options(tmp_path):
    script = Path(sys.executable).parent / "arcoforge"
    assert script.exists(), "the console script is installed beside the interpreter"
    top = ok(subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)).stdout
    assert top == ok(arcoforge("--help", cwd=tmp_path)).stdout.replace(
        "python -m arcoforge.cli", "arcoforge"
    )
    for command in ("init", "lint", "bake", "demo"):
        assert re.search(rf"^\s+{command}\s+\S", top, re.MULTILINE), top
    bake_help = ok(arcoforge("bake", "--help", cwd=tmp_path)).stdout
    assert "Usage:" in bake_help and "FEEDSTOCK" in bake_help
    for option in (
        "--target-root",
        "--cache",
        "--recipe",
        "--workers",
        "--prune",
        "--config",
        "--dry-run",
        "--json",
        "--debug",
    ):
        assert re.search(rf"^\s+{option}\b.*\w", bake_help, re.MULTILINE), option


def test_rebake_is_a_no_op_and_append_adds_the_rest(feedstock, tmp_path):
    args = ("bake", NAME, "--target-root", "out", "--workers", "2")
    ok(arcoforge(*args, "--prune", "2", cwd=tmp_path))
    again = ok(arcoforge(*args, "--prune", "2", cwd=tmp_path))
    assert "up to date" in again.stdout
    grown = ok(arcoforge(*args, "--append", "--json", cwd=tmp_path))
    summary = json_lines(grown.stdout)[-1]
    assert summary["inputs"] == 2 and summary["dims"]["time"] == 4
    store = tmp_path / "out" / f"{NAME}.zarr"
    assert_same_as_sources(str(store), sample_sources(feedstock))
    assert "up to date" in ok(arcoforge(*args, "--append", cwd=tmp_path)).stdout
    refused = error_line(arcoforge(*args, "--prune", "3", "--append", cwd=tmp_path), rc=1)
    assert "cannot append" in refused and "lacks" in refused
