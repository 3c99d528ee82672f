"""What a bake prints: the plan before (--dry-run) and the summary after."""

from __future__ import annotations

from typing import Any

import numpy as np

from .bake import BakeResult
from .plan import Plan, estimate


def describe_plan(plan: Plan) -> dict[str, Any]:
    """Stages with task counts and bytes, estimated from the first input."""
    if plan.recipe.virtual:
        from .references.plan import describe

        return describe(plan)
    state = estimate(plan)
    schema = state.schema
    decoded = sum(
        np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in schema.variables.values()
    )
    stages = [
        {"stage": s.name, "tasks": len(s.items(state)), "what": s.description} for s in plan.stages
    ]
    return {
        "target": plan.url,
        "inputs": len(plan.inputs),
        "input_bytes_estimate": int(schema.nbytes),
        "output_bytes_decoded_estimate": int(decoded),
        "dims": schema.dims,
        "chunks": state.chunks,
        "variables": sorted(schema.variables),
        "stages": stages,
    }


def result_dict(result: BakeResult) -> dict[str, Any]:
    """A bake result as plain JSON-ready data."""
    return {
        "url": result.url,
        "inputs": result.inputs,
        "dims": result.dims,
        "chunks": result.chunks,
        "bytes_in": result.bytes_in,
        "bytes_decoded": result.bytes_decoded,
        "bytes_out": result.bytes_out,
        "seconds": round(result.seconds, 3),
        "mb_per_s": round(result.mb_per_s, 1),
        "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        **result.stats,
    }


def mb(n: float) -> str:
    """Bytes as megabytes, for people."""
    return f"{n / 1e6:,.1f} MB"


def dims_text(sizes: dict[str, int]) -> str:
    """``time=60 lat=720``."""
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def render_plan(info: dict[str, Any], console, recipe_id: str) -> None:
    """Print a plan description as a table."""
    from rich.table import Table

    table = Table(title=f"recipe {recipe_id}: {info['inputs']} inputs -> {info['target']}")
    for col in ("stage", "tasks", "what"):
        table.add_column(col, justify="right" if col == "tasks" else "left")
    for s in info["stages"]:
        table.add_row(s["stage"], str(s["tasks"]), s["what"])
    console.print(table)
    console.print(
        f"dims {dims_text(info['dims'])}; chunks {dims_text(info['chunks'])}; "
        f"inputs about {mb(info['input_bytes_estimate'])}, "
        f"output about {mb(info['output_bytes_decoded_estimate'])} decoded"
    )


def render_result(result: BakeResult, console, recipe_id: str) -> None:
    """Print a bake's summary and how to open its output."""
    from rich.table import Table

    table = Table(title=f"baked {recipe_id}", show_header=False)
    rows = [
        ("output", result.url),
        ("dims", dims_text(result.dims)),
        ("chunks", dims_text(result.chunks)),
        ("inputs", f"{result.inputs} files, {mb(result.bytes_in)}"),
        ("written", f"{mb(result.bytes_decoded)} decoded, {mb(result.bytes_out)} stored"),
        ("time", f"{result.seconds:.1f} s ({result.mb_per_s:,.0f} MB/s)"),
        ("stages", ", ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())),
        ("validated", f"{result.stats.get('validated_inputs', 0)} inputs compared value for value"),
    ]
    if result.stats.get("up_to_date"):
        rows = [
            rows[0],
            rows[1],
            ("status", "up to date: baked before from the same recipe and inputs"),
        ]
    rows += _check_rows(result.stats)
    if result.stats.get("missing_inputs"):
        missing = result.stats["missing_inputs"]
        rows.append(("missing", f"{len(missing)} inputs skipped, first {missing[0]}"))
        rows.append(("", "fill them in later with --retry-failed"))
    if result.stats.get("tasks_resumed"):
        rows.append(
            ("resumed", f"{result.stats['tasks_resumed']} write tasks done by an earlier run")
        )
    if result.stats.get("worker_losses"):
        rows.append(("workers", f"{result.stats['worker_losses']} lost; their tasks ran again"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _check_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """What the check of the inputs for changes since the last bake found."""
    if stats.get("inputs_unchecked"):
        return [("changes", "inputs not checked for changes (--assume-unchanged)")]
    changed = stats.get("changed_inputs")
    rows = []
    if changed:
        first = f", first {changed[0]}" if len(changed) > 1 else f": {changed[0]}"
        n = len(changed)
        rows.append(("changed", f"{n} input{'s' * (n != 1)} changed since the last bake{first}"))
        feed = "they feed" if n > 1 else "it feeds"
        rows.append(("", f"the parts of the store {feed} were baked again"))
    if stats.get("identities_recorded"):
        n = stats["identities_recorded"]
        rows.append(("recorded", f"identities of {n} input{'s' * (n != 1)}, for the next check"))
    return rows
