"""The same recipe on Dask, Spark and Beam: the local engine's bytes, retries of tasks whose
worker died, progress and one-line errors. Real engines on loopback: a dask LocalCluster of
2 worker processes over TCP, a Spark standalone master and worker (and local[2]), Beam's
DirectRunner in multi_processing mode."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence
from arcoforge.cli.templates import write_feedstock
from arcoforge.core.progress import Reporter
from arcoforge.engines import get_engine
from arcoforge.errors import ArcoforgeError, SourceError
from arcoforge.recipe.config import read_config
from arcoforge.testing.archives import write_corrupt_file, write_oisst_archive
from arcoforge.testing.compare import assert_same_as_sources
from arcoforge.testing.engines import KillWorker, SparkStandalone
from arcoforge.testing.httpserver import Faults, FileServer
from arcoforge.testing.recipes import simple_recipe

pytestmark = pytest.mark.timeout(600)

SPARK_LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


class Recorder(Reporter):
    """Keeps every event a bake reports."""

    def __init__(self):
        self.events: list[tuple] = []

    def stage_started(self, name, total, description):
        self.events.append(("started", name, total))

    def advanced(self, name):
        self.events.append(("advanced", name))

    def stage_done(self, name, seconds):
        self.events.append(("done", name))

    def event(self, kind, **fields):
        self.events.append((kind, fields))

    def count(self, kind: str, name: str) -> int:
        return sum(1 for e in self.events if e[:2] == (kind, name))


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> list[Path]:
    return write_oisst_archive(tmp_path_factory.mktemp("engines") / "src", days=8, ny=18, nx=36)


@pytest.fixture(scope="session")
def reference(archive, tmp_path_factory) -> Path:
    """The store the local engine bakes from ``archive``."""
    result = bake(simple_recipe(archive), tmp_path_factory.mktemp("local"), workers=2)
    assert_same_as_sources(result.url, archive)
    return Path(result.url)


@pytest.fixture(scope="session")
def dask_scheduler():
    """The address of a LocalCluster of 2 worker processes over TCP on 127.0.0.1."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tcp://",
        dashboard_address=None,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def spark_master(tmp_path_factory):
    """The URL of a Spark standalone master with one worker of 2 cores on 127.0.0.1."""
    with SparkStandalone(tmp_path_factory.mktemp("spark")) as cluster:
        yield cluster.url


def engines(dask_scheduler: str, spark_master: str) -> dict[str, tuple[str, dict]]:
    return {
        "dask": ("dask", {"scheduler": dask_scheduler}),
        "spark-local": ("spark", {}),
        "spark-standalone": ("spark", {"master": spark_master, "conf": SPARK_LOOPBACK}),
        "beam": ("beam", {}),
    }


def cluster_engine(request, label: str) -> tuple[str, dict]:
    """The engine ``label`` of :func:`engines` (or local), starting only the cluster it needs."""
    if label == "local":
        return "local", {}
    dask = request.getfixturevalue("dask_scheduler") if label == "dask" else ""
    spark = request.getfixturevalue("spark_master") if label == "spark-standalone" else ""
    return engines(dask, spark)[label]


def files(store: Path) -> dict[str, bytes]:
    """Every file of a store (metadata and chunks) by its path in the store."""
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def assert_same_bytes(store: str | Path, reference: Path) -> None:
    got, want = files(Path(store)), files(reference)
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"files that differ from the local engine's: {differ}"


def test_every_engine_writes_the_local_engines_bytes(
    archive, reference, dask_scheduler, spark_master, tmp_path
):
    for label, (name, options) in engines(dask_scheduler, spark_master).items():
        reporter = Recorder()
        result = bake(
            simple_recipe(archive),
            tmp_path / label,
            engine=name,
            engine_options=options,
            workers=2,
            reporter=reporter,
        )
        assert_same_bytes(result.url, reference)
        assert result.dims == {"time": 8, "lat": 18, "lon": 36}, label
        assert result.stats["validated_inputs"] == 2, label
        for stage in ("prepare", "scan", "write", "publish"):
            assert reporter.count("started", stage) == reporter.count("done", stage) == 1
        assert ("started", "scan", 8) in reporter.events, label
        assert reporter.count("advanced", "scan") == 8, label
        assert reporter.count("advanced", "write") >= 1, label


def killing_recipe(archive, folder: Path) -> tuple:
    """A recipe whose preprocessing kills the worker running it, once, in the write stage
    (8 scan calls, then one more on a worker: the template or the first write)."""
    folder.mkdir()
    kill = KillWorker(str(folder), after=10)
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | kill | StoreToZarr("out.zarr", target_chunks={"time": 3})
    return recipe, kill


@pytest.mark.parametrize("label", ["dask", "spark-standalone", "beam"])
def test_a_worker_killed_mid_run_is_replaced_and_the_bytes_are_the_same(
    request, archive, reference, tmp_path, label
):
    name, options = cluster_engine(request, label)
    recipe, kill = killing_recipe(archive, tmp_path / "kill")
    reporter = Recorder()
    result = bake(
        recipe, tmp_path / "out", engine=name, engine_options=options, workers=2, reporter=reporter
    )
    assert kill.killed, "no worker was killed"
    assert_same_bytes(result.url, reference)
    if name == "beam":
        assert any(e[0] == "pipeline_retry" for e in reporter.events)


def test_beam_stops_retrying_a_pipeline_that_fails_the_same_way_twice(archive, tmp_path):
    (tmp_path / "kill").mkdir()
    kill = KillWorker(str(tmp_path / "kill"), after=10, every=True)  # every write task
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | kill | StoreToZarr("out.zarr", target_chunks={"time": 3})
    reporter = Recorder()
    with pytest.raises(ArcoforgeError, match=r"^beam pipeline failed 2 times: "):
        bake(recipe, tmp_path / "out", engine="beam", workers=2, reporter=reporter)
    assert [e[1]["attempt"] for e in reporter.events if e[0] == "pipeline_retry"] == [1]
    assert not (tmp_path / "out" / "out.zarr").exists()


@pytest.mark.parametrize("label", ["dask", "spark-standalone", "beam"])
def test_a_task_error_names_the_input(request, archive, tmp_path, label):
    broken = write_corrupt_file(tmp_path / archive[3].name)
    paths = [*archive[:3], broken, *archive[4:]]
    name, options = cluster_engine(request, label)
    with pytest.raises(SourceError, match=archive[3].name):
        bake(simple_recipe(paths), tmp_path / "out", engine=name, engine_options=options, workers=2)


@pytest.mark.parametrize("label", ["local", "dask", "spark-standalone", "beam"])
def test_worker_log_lines_reach_the_driver_naming_the_task(
    request, archive, tmp_path, caplog, label
):
    name, options = cluster_engine(request, label)
    # the first attempt at each file fails (its HEAD, then GET, answer 503 or 500), so
    # each scan retries it once
    with FileServer(
        archive[0].parent, faults=Faults(error_rate=1.0, max_faults_per_path=2)
    ) as server:
        urls = [f"{server.url}/{p.name}" for p in archive]
        with caplog.at_level(logging.WARNING, logger="arcoforge"):
            result = bake(
                simple_recipe(urls),
                tmp_path / "out",
                engine=name,
                engine_options=options,
                workers=2,
            )
    assert_same_as_sources(result.url, archive)
    retries = [r.getMessage() for r in caplog.records if "retry 1 of 5" in r.getMessage()]
    for url in urls:
        # logged by a worker, written here with the task that logged it
        assert f"scan of {url}: HTTP 50" in "\n".join(retries), (url, retries)
    assert len(retries) == len(urls), retries


def warn_of_odd_units(ds):
    """A preprocessing step that warns, as xarray and recipes' own code do."""
    warnings.warn("odd units in this file", UserWarning, stacklevel=1)
    return ds


def test_warnings_on_local_workers_are_logged_here_naming_the_task(archive, tmp_path, caplog):
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | warn_of_odd_units | StoreToZarr("out.zarr")
    with caplog.at_level(logging.WARNING, logger="arcoforge"):
        result = bake(recipe, tmp_path, workers=2)
    assert_same_as_sources(result.url, archive)
    lines = [r.getMessage() for r in caplog.records if r.name == "arcoforge"]
    named = [line for line in lines if line.startswith("scan of ") and "odd units" in line]
    assert named and all(str(archive[0].parent) in line for line in named), lines


def test_workers_with_another_arcoforge_are_refused_at_start_up(dask_scheduler):
    from arcoforge import __version__
    from arcoforge.core.tasks import check_workers

    with get_engine("dask", scheduler=dask_scheduler) as engine:
        found = engine.client().run(lambda: __import__("arcoforge").__version__)
    assert len(found) == 2 and set(found.values()) == {__version__}
    check_workers("dask", found)
    old = {**found, "tcp://127.0.0.1:1": "0.0.9"}
    with pytest.raises(ArcoforgeError) as info:
        check_workers("dask", old)
    assert str(info.value) == (
        f"dask worker tcp://127.0.0.1:1 has arcoforge 0.0.9, this process {__version__}: "
        "install the same version everywhere"
    )


@pytest.mark.parametrize("label", ["dask", "spark-standalone"])
def test_workers_keep_their_imports_out_of_full_garbage_collections(request, label):
    # Spark's Python workers collect garbage after every task: with arcoforge's imports in
    # sight, 0.1 s a task
    def frozen_objects(_: int) -> int:  # defined here: Spark's workers cannot import tests
        import gc

        return gc.get_freeze_count()

    name, options = cluster_engine(request, label)
    with get_engine(name, workers=2, **options) as engine:
        frozen = list(engine.map(frozen_objects, range(4)))
    assert len(frozen) == 4 and min(frozen) > 10_000


def test_local_spark_runs_its_jvm_without_the_optimizing_compiler():
    # the JVM only schedules Python tasks; its C2 compiler took 10% of a bake's CPU. In a
    # process of its own: a process keeps the JVM its first session started
    script = (
        "from arcoforge.engines import get_engine\n"
        "with get_engine('spark', workers=1) as engine:\n"
        "    jvm = engine.session().sparkContext._jvm\n"
        "    bean = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()\n"
        "    print(list(bean.getInputArguments()))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "-XX:TieredStopAtLevel=1" in run.stdout


def test_dask_local_cluster_workers_keep_malloc_trim_threshold_and_no_profiler(monkeypatch):
    # dask's default of 65536 made every large buffer a fresh memory map: writes 1.5x slower;
    # a LocalCluster started before in this process leaves it in the environment
    # (and without the dashboard's sampling profiler and busy monitors)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with get_engine("dask", workers=2) as engine:
        found = engine.client().run(_malloc_setting_and_profiler)
    assert list(found.values()) == [(None, False, "200ms"), (None, False, "200ms")]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's, as it was


def _malloc_setting_and_profiler():
    import dask

    enabled = dask.config.get("distributed.worker.profile.enabled")
    tick = dask.config.get("distributed.admin.tick.interval")
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), enabled, tick


@pytest.mark.parametrize("name", ["dask", "spark", "beam"])
def test_an_engine_not_installed_names_its_extra(monkeypatch, name):
    module = {"dask": "distributed", "spark": "pyspark", "beam": "apache_beam"}[name]
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails, as when missing
    with pytest.raises(ArcoforgeError) as info:
        get_engine(name)
    assert str(info.value) == f'engine {name!r} is not installed: pip install "arcoforge[{name}]"'


def test_config_file_sections_configure_each_engine(tmp_path):
    path = tmp_path / "bake.yaml"
    settings = {
        "engine": "spark",
        "spark": {"master": "spark://127.0.0.1:7077", "conf": {"spark.executor.memory": "4g"}},
        "beam": {"runner": "FlinkRunner", "options": {"flink_master": "127.0.0.1:8081"}},
        "dask": {"scheduler": "tcp://127.0.0.1:8786", "threads_per_worker": 2},
    }
    path.write_text(yaml.safe_dump(settings))
    config = read_config(path)
    assert config.engine_options("spark") == {**settings["spark"], "max_failures": 4}
    assert config.engine_options("beam") == {**settings["beam"], "attempts": 3}
    assert config.engine_options("dask")["scheduler"] == "tcp://127.0.0.1:8786"
    assert config.engine_options("local") == {}
    path.write_text("engine: flink\n")
    with pytest.raises(ArcoforgeError, match=r"bake.yaml: engine: Input should be 'local'"):
        read_config(path)


def test_cli_bakes_on_a_dask_cluster(dask_scheduler, tmp_path):
    feedstock = write_feedstock(tmp_path / "feed")
    command = [sys.executable, "-m", "arcoforge.cli", "bake", str(feedstock), "--json"]
    proc = subprocess.run(
        [*command, "--target-root", "out", "--engine", "dask", "--dask-scheduler", dask_scheduler],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stdout.splitlines() if '"summary"' in line]
    assert len(summary) == 1
    stores = list((tmp_path / "out").glob("*.zarr"))
    assert len(stores) == 1
    assert_same_as_sources(str(stores[0]), sorted((feedstock / "sample-data").glob("*.nc")))
