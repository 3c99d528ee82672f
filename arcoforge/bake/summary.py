"""What a bake prints: the plan before (--dry-run) and the summary after."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from arcoforge.amounts import count, size
from arcoforge.bake.run import BakeResult
from arcoforge.core.plan import Plan
from arcoforge.products import product_for


def describe_plan(plan: Plan) -> dict[str, Any]:
    """Stages with task counts and bytes, estimated from the first input."""
    return product_for(plan.recipe).describe(plan)


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
    """Bytes for people: in KB, MB or GB, whichever suits them (see :func:`amounts.size`)."""
    return size(n)


def dims_text(sizes: dict[str, int]) -> str:
    """``time=60 lat=720``."""
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def render_plan(info: dict[str, Any], console, recipe_id: str) -> None:
    """Print a plan description as a table."""

    title = f"recipe {recipe_id}: {count(info['inputs'], 'input')} -> {info['target']}"
    table = Table(title=title)
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
    """Print a bake's summary and how to open its output; the title says whether the bake
    baked or found its store up to date."""

    stats = result.stats
    if stats.get("up_to_date"):
        title = f"{recipe_id}: up to date, nothing baked"
        rows = [
            ("output", result.url),
            ("dims", dims_text(result.dims)),
            ("status", "baked before from the same recipe and inputs"),
            *_check_rows(stats),
        ]
    else:
        title = f"baked {recipe_id}"
        rows = _baked_rows(result)
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _baked_rows(result: BakeResult) -> list[tuple[str, str]]:
    stats = result.stats
    validated = stats.get("validated_inputs", 0)
    rows = [
        ("output", result.url),
        ("dims", dims_text(result.dims)),
        ("chunks", dims_text(result.chunks)),
        ("inputs", f"{count(result.inputs, 'file')}, {mb(result.bytes_in)}"),
        ("written", f"{mb(result.bytes_decoded)} decoded, {mb(result.bytes_out)} stored"),
        ("time", f"{result.seconds:.1f} s ({size(result.mb_per_s * 1e6)}/s)"),
        ("stages", ", ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())),
        ("validated", f"{count(validated, 'input')} compared value for value"),
        *_check_rows(stats),
    ]
    if stats.get("missing_inputs"):
        missing = stats["missing_inputs"]
        rows.append(("missing", f"{count(len(missing), 'input')} skipped, first {missing[0]}"))
        rows.append(("", "fill them in later with --retry-failed"))
    if stats.get("tasks_resumed"):
        done = count(stats["tasks_resumed"], "write task")
        rows.append(("resumed", f"{done} done by an earlier run"))
    if stats.get("worker_losses"):
        rows.append(("workers", f"{stats['worker_losses']} lost; their tasks ran again"))
    return rows


def _check_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """What the check of the inputs for changes since the last bake found."""
    if stats.get("inputs_unchecked"):
        return [("changes", "inputs not checked for changes (--assume-unchanged)")]
    changed = stats.get("changed_inputs")
    rows = []
    if changed:
        first = f", first {changed[0]}" if len(changed) > 1 else f": {changed[0]}"
        n = len(changed)
        rows.append(("changed", f"{count(n, 'input')} changed since the last bake{first}"))
        feed = "they feed" if n > 1 else "it feeds"
        rows.append(("", f"the parts of the store {feed} were baked again"))
    if stats.get("identities_recorded"):
        n = stats["identities_recorded"]
        rows.append(("recorded", f"identities of {count(n, 'input')}, for the next check"))
    return rows
