"""What ``arcoforge validate`` and ``arcoforge runs`` print: tables for people."""

from __future__ import annotations

from rich.table import Table

from arcoforge.amounts import count
from arcoforge.bake.summary import dims_text, mb
from arcoforge.core.report import StoreReport
from arcoforge.core.runs import RunRecord


def render_report(report: StoreReport, console) -> None:
    """The checks of an audit, then its findings."""
    table = Table(title=f"validate {report.url}")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    for check in report.checks:
        table.add_row(check.name, "ok" if check.ok else "FAILED", check.detail)
    console.print(table)
    for finding in report.findings:
        console.print(f"  - {finding}", soft_wrap=True)


def render_runs(records: list[RunRecord], console) -> None:
    """One row per run, newest first."""
    table = Table(title="runs (newest first)")
    for col in ("id", "status", "recipe", "target", "inputs", "seconds", "started"):
        right = col in ("inputs", "seconds")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for r in records:
        table.add_row(
            r.id,
            r.status,
            r.recipe or r.store,
            r.target,
            str(r.inputs.count),
            "" if r.seconds is None else f"{r.seconds:.1f}",
            f"{r.started:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)


def render_run(r: RunRecord, console) -> None:
    """Everything a record holds, one field a row."""
    table = Table(title=f"run {r.id}", show_header=False)
    ended = f"{r.ended:%Y-%m-%d %H:%M:%S} UTC" if r.ended else "-"
    rows = [
        ("status", r.status),
        ("recipe", f"{r.recipe or '-'} (store {r.store})"),
        ("feedstock", r.feedstock or "-"),
        ("command", " ".join(r.args) or "-"),
        ("by", r.by or "-"),
        ("target", r.target),
        ("inputs", _inputs(r)),
        *[(f"output {i}", _output(o)) for i, o in enumerate(r.outputs, 1)],
        ("started", f"{r.started:%Y-%m-%d %H:%M:%S} UTC"),
        ("ended", ended),
        ("seconds", "-" if r.seconds is None else f"{r.seconds:.1f}"),
        ("stages", ", ".join(f"{k} {v:.1f} s" for k, v in r.stage_seconds.items()) or "-"),
        ("retries", str(r.retries)),
        *[("failure", f) for f in r.failures],
        ("validation", _validation(r)),
        ("versions", " ".join(f"{k}={v}" for k, v in r.versions.items())),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _inputs(r: RunRecord) -> str:
    size = f", {mb(r.inputs.bytes)}" if r.inputs.bytes is not None else ""
    ends = f" ({r.inputs.first} .. {r.inputs.last})" if r.inputs.first else ""
    return f"{count(r.inputs.count, 'file')}{size}{ends}"


def _output(o) -> str:
    stored = f", {mb(o.bytes_stored)} stored" if o.bytes_stored is not None else ""
    return f"{o.url}: {dims_text(o.dims)}; chunks {dims_text(o.chunks)}{stored}"


def _validation(r: RunRecord) -> str:
    if not r.validation:
        return "-"
    text = f"{count(r.validation.get('inputs_compared', 0), 'input')} compared value for value"
    check = r.validation.get("store_check")
    return f"{text}; store: {check}" if check else text
