"""Plans are data: stages, tasks and regions follow from the recipe without running anything."""

from __future__ import annotations

import pickle

import pytest

from arcoforge.bake.run import normalize_root
from arcoforge.core.compare import sample_positions
from arcoforge.errors import RecipeError
from arcoforge.products import make_plan
from arcoforge.testing.recipes import simple_recipe
from arcoforge.zarr.chunking import parse_bytes, resolve_chunks
from arcoforge.zarr.plan import estimate


def plan_for(tmp_path, paths, chunks, workers=2):
    return make_plan(
        simple_recipe(paths, chunks=chunks), normalize_root(tmp_path), cache=None, workers=workers
    )


def test_stages_and_task_counts(tmp_path, small_archive):
    plan = plan_for(tmp_path, small_archive, {"time": 3})
    state = estimate(plan)
    assert [s.name for s in plan.stages] == ["prepare", "scan", "write", "publish"]
    counts = {s.name: len(s.items(state)) for s in plan.stages}
    # 3 time chunks x 4 variables; 3 regions < 2*2 workers, so variables split in 2 groups
    assert counts == {"prepare": 0, "scan": 8, "write": 6, "publish": 0}
    checks = [c.input.pos("time") for t in plan.write_tasks(state) for c in t.checks]
    # the first and last inputs are checked by every task that writes part of them
    assert sorted(checks) == [0, 0, 7, 7]
    assert not (tmp_path / "out.zarr").exists(), "planning writes nothing"


def test_write_tasks_cover_every_step_once_and_are_picklable(tmp_path, small_archive):
    plan = plan_for(tmp_path, small_archive, {"time": 3})
    tasks = plan.write_tasks(estimate(plan))
    covered = {}
    for task in tasks:
        pickle.loads(pickle.dumps(task))
        region = dict(task.region)["time"]
        for var in task.variables:
            for t in range(region.start, region.stop):
                covered[(var, t)] = covered.get((var, t), 0) + 1
        # each task reads exactly the inputs of its region
        assert [p.input.pos("time") for p in task.pieces] == list(range(region.start, region.stop))
    assert covered == {(v, t): 1 for v in ("sst", "anom", "err", "ice") for t in range(8)}


def test_write_tasks_go_largest_first_with_alike_tasks_side_by_side(tmp_path, small_archive):
    # 8 steps in chunks of 3: regions of 3, 3 and 2 steps, each for 2 groups of variables
    plan = plan_for(tmp_path, small_archive, {"time": 3})
    tasks = plan.write_tasks(estimate(plan))
    order = [(dict(t.region)["time"].start, t.variables) for t in tasks]
    first, second = tasks[0].variables, tasks[2].variables
    assert set(first).isdisjoint(second)
    assert order == [(0, first), (3, first), (0, second), (3, second), (6, first), (6, second)]


def test_more_workers_split_variables_fewer_share(tmp_path, small_archive):
    one = plan_for(tmp_path, small_archive, {"time": 4}, workers=1)
    many = plan_for(tmp_path, small_archive, {"time": 4}, workers=4)
    assert len(one.write_tasks(estimate(one))) == 2
    assert len(many.write_tasks(estimate(many))) == 8


def test_chunk_resolution(tmp_path, small_archive):
    schema = estimate(plan_for(tmp_path, small_archive, {"time": 3})).schema
    assert resolve_chunks(schema, {"time": 100}) == {"time": 8, "lat": 18, "lon": 36}
    assert resolve_chunks(schema, None)["time"] == 8
    assert resolve_chunks(schema, "2kB") == {"time": 1, "lat": 18, "lon": 18}
    with pytest.raises(RecipeError, match="'depth' is not in the dataset"):
        resolve_chunks(schema, {"depth": 3})
    with pytest.raises(RecipeError, match="positive integer"):
        resolve_chunks(schema, {"time": 0})
    assert parse_bytes("100MB") == 100_000_000 and parse_bytes("1.5 KiB") == 1536
    with pytest.raises(RecipeError, match="size such as"):
        parse_bytes("lots")


def test_validation_samples_first_and_last():
    assert sample_positions(1) == [0]
    assert sample_positions(10) == [0, 9]
    assert sample_positions(10, 3) == [0, 4, 9]
