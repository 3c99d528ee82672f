"""Apache Beam: a whole plan as ONE pipeline (one Dataflow or Flink job), on any runner.

Each stage becomes ``items -> Reshuffle -> tasks -> ToList -> reduce``. The state the
driver would keep travels through the pipeline as one element: a stage's items step
computes its tasks from it (on a worker), and its reduce step is a single-element step
that takes the stage's collected results as a side input and hands the new state to the
next stage. The last step writes the final state beside the store, where the driver reads
it. Task and reduce errors travel as :class:`Failed` values to that end, so the pipeline
only fails when the runner does (a worker died, say); the engine then runs it again,
and the bake resumes from what was recorded done. The lines tasks log travel with their
results too, and are logged by the driver when the pipeline ends.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import apache_beam as beam
import cloudpickle
import fsspec
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from arcoforge.core import ledger as ledgers
from arcoforge.core.plan import BakeState, Plan
from arcoforge.core.progress import Reporter
from arcoforge.core.statefile import dumps_binary, loads_binary
from arcoforge.core.tasks import Failed, call, portable
from arcoforge.core.worklog import Logged, replay
from arcoforge.engines.base import Engine
from arcoforge.errors import ArcoforgeError

OUTCOME = "beam outcome"
LOCAL_RUNNERS = ("DirectRunner", "PrismRunner")
# threads of the DirectRunner that die with a worker (their error is the pipeline's)
WORKER_THREADS = ("run_worker", "read_grpc_client_inputs", "beam_control_read")


class BeamEngine(Engine):
    """Run plans as one Beam pipeline on ``runner`` with pipeline ``options`` (the
    DirectRunner: ``workers`` processes in multi_processing mode). A pipeline that fails
    is run again, up to ``attempts`` times in all, unless it failed the same way twice in
    a row (not a passing fault, then)."""

    name = "beam"

    def __init__(
        self,
        workers: int | None = None,
        runner: str = "DirectRunner",
        options: dict[str, Any] | None = None,
        attempts: int = 3,
    ):
        self.runner = runner
        direct = {
            "direct_num_workers": max(1, workers or 1),
            "direct_running_mode": "multi_processing",
            "default_sdk_harness_log_level": "WARNING",
            "sdk_harness_log_level_overrides": {"apache_beam": "ERROR"},
        }
        self.options = {**(direct if runner == "DirectRunner" else {}), **(options or {})}
        self.attempts = max(1, attempts)

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        raise ArcoforgeError("the beam engine runs whole plans as one pipeline, not single maps")

    def run(self, plan: Plan, reporter: Reporter) -> tuple[BakeState, dict[str, float]]:
        previous = None
        for attempt in range(1, self.attempts + 1):
            relay = Relay(reporter) if self.runner in LOCAL_RUNNERS else nullcontext()
            with relay, _quiet_worker_threads():
                outcome = f"{plan.ledger.folder}/engine/{uuid.uuid4().hex}.outcome"
                pipeline = self._pipeline(plan, getattr(relay, "address", None), outcome)
                try:
                    state, timings, totals, lines = _run(pipeline, outcome, plan)
                except Exception as exc:
                    why = _last_line(exc)
                    if attempt == self.attempts or why == previous:
                        raise ArcoforgeError(
                            f"beam pipeline failed {attempt} times: {why}"
                        ) from exc
                    reporter.event("pipeline_retry", engine=self.name, attempt=attempt, error=why)
                    previous = why
                    continue
            catch_up(reporter, plan, getattr(relay, "seen", {}), timings, totals)
            replay(Logged(None, tuple(lines)))
            if isinstance(state, Failed):
                raise state.error
            return state, timings
        raise AssertionError("unreachable")

    def _pipeline(self, plan: Plan, address: tuple | None, outcome: str) -> beam.Pipeline:
        """The bake's pipeline; an error here (a bad option, say) is not worth a retry."""
        try:
            options = PipelineOptions(flags=[], runner=self.runner, **self.options)
            pipeline = beam.Pipeline(options=options)
            build(pipeline, plan, address, outcome)
        except Exception as exc:
            raise ArcoforgeError(f"beam pipeline could not be built: {_last_line(exc)}") from exc
        return pipeline


def _run(pipeline: beam.Pipeline, outcome: str, plan: Plan) -> tuple:
    """Run ``pipeline`` to the end; the outcome it left at ``outcome``."""
    result = pipeline.run()
    result.wait_until_finish()
    options = plan.target.storage_options
    data = ledgers.get(outcome, options)
    if data is None:
        raise ArcoforgeError(f"the pipeline ended in state {result.state} without a result")
    fs, path = fsspec.core.url_to_fs(outcome, **(options or {}))
    fs.rm(path)
    return loads_binary(data, outcome, OUTCOME, outcome_types(plan))


@contextmanager
def _quiet_worker_threads() -> Iterator[None]:
    """Leave the errors of the runner's threads to the pipeline's (no thread tracebacks)."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is None or args.thread.name not in WORKER_THREADS:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def build(pipeline: beam.Pipeline, plan: Plan, address: tuple | None, outcome: str) -> None:
    """Add the steps of every stage of ``plan`` to ``pipeline``."""
    payload = cloudpickle.dumps(plan)
    carried = pipeline | "start" >> beam.Create(
        [cloudpickle.dumps((plan.new_state(), {}, {}, 0.0, []))]
    )
    for index, stage in enumerate(plan.stages):
        step = dict(payload=payload, index=index, address=address)
        out = carried | f"{stage.name}: items" >> beam.ParDo(Items(**step)).with_outputs(
            "state", main="items"
        )
        if stage.func is None:
            results = pipeline | f"{stage.name}: no tasks" >> beam.Create([[]])
        else:
            results = (
                out.items
                | f"{stage.name}: shuffle" >> beam.Reshuffle()
                | f"{stage.name}: tasks" >> beam.ParDo(Task(**step))
                | f"{stage.name}: collect" >> beam.combiners.ToList()
            )
        carried = out.state | f"{stage.name}: reduce" >> beam.ParDo(
            Reduce(**step), beam.pvalue.AsSingleton(results)
        )
    options = plan.target.storage_options
    _ = carried | "outcome" >> beam.Map(save_outcome, outcome, options, outcome_types(plan))


def outcome_types(plan: Plan) -> tuple[type, ...]:
    """The classes the final state of ``plan`` may hold."""
    return (type(plan.new_state()), Failed, *plan.state_types)


def save_outcome(carried: bytes, url: str, storage_options: dict | None, types: tuple) -> None:
    """Write the final state where the driver reads it, as data (see
    :mod:`arcoforge.core.statefile`): the driver needs its results, not the opener (which holds
    the recipe's functions) nor the Zarr encoding the template was written with."""
    state, timings, totals, _, lines = cloudpickle.loads(carried)
    if isinstance(state, BakeState):
        state = state.outcome()
    try:
        body = dumps_binary((state, timings, totals, lines), OUTCOME, types)
    except TypeError as exc:
        failed = Failed(ArcoforgeError(f"the final state of the bake cannot be kept: {exc}"))
        body = dumps_binary((failed, timings, totals, lines), OUTCOME, types)
    ledgers.put(url, body, storage_options)


class _Step(beam.DoFn):
    """A step of one stage; the plan is unpickled once per worker."""

    def __init__(self, payload: bytes, index: int, address: tuple | None):
        self.payload, self.index, self.address = payload, index, address

    def setup(self) -> None:
        self.stage = cloudpickle.loads(self.payload).stages[self.index]
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if self.address else None

    def tell(self, *message: Any) -> None:
        """Send a progress event to the driver's relay (best effort, local runners only)."""
        if self.socket is not None:
            self.socket.sendto(json.dumps(message).encode(), self.address)

    def teardown(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()


class Items(_Step):
    """The stage's tasks, computed from the state; the state goes on to the reduce."""

    def process(self, carried: bytes):
        state, timings, totals, _, lines = cloudpickle.loads(carried)
        started = time.time()
        items = [] if isinstance(state, Failed) else self.stage.items(state)
        self.tell("started", self.stage.name, len(items), self.stage.description)
        for item in items:
            yield cloudpickle.dumps(item)
        yield beam.pvalue.TaggedOutput(
            "state", cloudpickle.dumps((state, timings, totals, started, lines))
        )


class Task(_Step):
    """One task of the stage."""

    def process(self, item: bytes):
        result = call(self.stage.func, cloudpickle.loads(item))
        self.tell("advanced", self.stage.name)
        Metrics.counter("arcoforge", f"{self.stage.name} tasks done").inc()
        yield cloudpickle.dumps(result)


class Reduce(_Step):
    """The stage's reduce, on the one element that carries the state."""

    def process(self, carried: bytes, results: list[bytes]):
        state, timings, totals, started, lines = cloudpickle.loads(carried)
        values = []
        for result in map(cloudpickle.loads, results):
            if isinstance(result, Logged):
                lines.extend(result.lines)
                result = result.result
            values.append(result)
        failed = next((v for v in values if isinstance(v, Failed)), None)
        if not isinstance(state, Failed):
            state = failed or _reduced(self.stage.reduce, state, values)
        name = self.stage.name
        timings[name], totals[name] = time.time() - started, len(values)
        self.tell("done", name, timings[name])
        yield cloudpickle.dumps((state, timings, totals, started, lines))


def _reduced(reduce: Callable, state: BakeState, values: list) -> BakeState | Failed:
    try:
        reduce(state, values)
    except Exception as exc:
        return Failed(portable(exc))
    return state


class Relay:
    """Progress events of workers on this machine, received on a loopback UDP port and
    passed to ``reporter`` as they come; ``seen`` counts what was passed on."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.seen: dict[str, dict[str, Any]] = {}
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.address = self.socket.getsockname()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._receive, name="beam-progress", daemon=True)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.socket.close()

    def _receive(self) -> None:
        while not self.stopping.is_set():
            try:
                kind, name, *rest = json.loads(self.socket.recv(4096))
            except (TimeoutError, OSError, ValueError):
                continue
            self._pass(kind, name, rest)

    def _pass(self, kind: str, name: str, rest: list) -> None:
        seen = self.seen.setdefault(name, {"started": False, "advanced": 0, "done": False})
        if kind == "started" and not seen["started"]:
            seen["started"] = True
            self.reporter.stage_started(name, *rest)
        elif kind == "advanced" and seen["started"] and not seen["done"]:
            seen["advanced"] += 1
            self.reporter.advanced(name)
        elif kind == "done" and seen["started"] and not seen["done"]:
            seen["done"] = True
            self.reporter.stage_done(name, rest[0])


def catch_up(reporter: Reporter, plan: Plan, seen: dict, timings: dict, totals: dict) -> None:
    """Report what the relay did not (all of it, on remote runners) once the pipeline ends."""
    for stage in plan.stages:
        if stage.name not in timings:
            continue
        mine = seen.get(stage.name, {"started": False, "advanced": 0, "done": False})
        if not mine["started"]:
            reporter.stage_started(stage.name, totals[stage.name], stage.description)
            mine["advanced"] = 0
        for _ in range(totals[stage.name] - mine["advanced"]):
            reporter.advanced(stage.name)
        if not mine["done"]:
            reporter.stage_done(stage.name, timings[stage.name])


def _last_line(exc: BaseException) -> str:
    """The last line of a runner's (often long) error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
