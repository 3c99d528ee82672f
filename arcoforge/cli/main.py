"""The ``arcoforge`` command: demo, bake, lint, init, validate, runs, catalog."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click
import fsspec
from rich.console import Console

from arcoforge.amounts import count
from arcoforge.bake.run import bake as run_bake
from arcoforge.bake.run import normalize_root
from arcoforge.bake.summary import describe_plan, render_plan, render_result, result_dict
from arcoforge.cli.demo import run_demo
from arcoforge.cli.reports import render_report, render_run, render_runs
from arcoforge.cli.templates import write_feedstock
from arcoforge.core.open import cache_for
from arcoforge.core.progress import JsonReporter, PlainReporter, console_reporter, logs_to
from arcoforge.core.runs import RunContext, find_run, list_runs, new_id
from arcoforge.errors import (
    ArcoforgeError,
    FeedstockError,
    MissingDependency,
    ValidationError,
    format_chain,
    install_hint,
    one_line,
    require,
)
from arcoforge.products import make_plan
from arcoforge.recipe.config import read_config
from arcoforge.recipe.feedstock import lint as run_lint
from arcoforge.recipe.feedstock import load_recipes
from arcoforge.sources.secrets import redact_remembered
from arcoforge.validate import checker_for


def _console(stderr: bool = False):

    return Console(stderr=stderr, highlight=False)


def friendly(func: Callable) -> Callable:
    """Turn any error into one line on stderr and exit 1; tracebacks only with --debug."""

    @wraps(func)
    def wrapper(*args, debug: bool = False, **kwargs):
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()
            return result
        except BrokenPipeError:  # the reader went away (| head): what it read was enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except click.exceptions.Exit:
            raise
        except click.ClickException as exc:  # a bad flag: exit 2, as click's own errors
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:  # every error of the chain, from workers too, each secret masked
                click.echo(redact_remembered(format_chain(exc)), err=True, nl=False)
            click.echo(f"error: {_error_text(exc)}", err=True)
            sys.exit(1)

    shows = "Show the traceback of an error and of the errors that caused it."
    return click.option("--debug", is_flag=True, help=shows)(wrapper)


def json_events(func: Callable) -> Callable:
    """With ``--json``, the command's events go to a JSON reporter given as ``events`` (None
    without), and a failure ends them with an ``error`` event holding its one line."""

    @wraps(func)
    def wrapper(*args, as_json: bool = False, **kwargs):

        events = JsonReporter(run=new_id()) if as_json else None
        try:
            return func(*args, as_json=as_json, events=events, **kwargs)
        except (Exception, KeyboardInterrupt) as exc:
            if events is not None:
                events.error(_error_text(exc))
            raise

    return wrapper


def _error_text(exc: BaseException) -> str:
    """The one line ``friendly`` prints for ``exc``, without its ``error:``, every secret
    of the bake masked."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    return redact_remembered(one_line(exc))


class _Commands(click.Group):
    """The command group; a bad flag or argument is one ``error:`` line and exit 2, as the
    errors the commands raise are (click's usage text is for --help)."""

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `arcoforge`: the help
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="arcoforge")
def main():
    """Bake archives of netCDF, HDF5, GRIB or Zarr files into analysis-ready Zarr stores.

    Start with `arcoforge demo`; write a feedstock with `arcoforge init NAME`, check it
    with `arcoforge lint NAME` and run it with `arcoforge bake NAME --target-root DIR`.
    """


storage_option = click.option(
    "--storage-option",
    metavar="KEY=VALUE",
    multiple=True,
    help="An fsspec option of the target, as endpoint_url=http://host:9000; a dotted KEY "
    "sets a nested one (client_kwargs.region_name=eu-west-1); VALUE is read as JSON if it "
    "is JSON (true, 3), else as text. Repeat for more; over the config file's.",
)


def storage_options(flags: tuple[str, ...], base: dict | None = None) -> dict:
    """``base`` (the config file's storage options) with each ``KEY=VALUE`` flag set in it."""
    options = copy.deepcopy(base or {})
    for flag in flags:
        key, sep, text = flag.partition("=")
        if not sep or not key or "" in key.split("."):
            raise click.BadParameter(f"{flag!r} is not KEY=VALUE", param_hint="--storage-option")
        *parents, leaf = key.split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise click.BadParameter(
                    f"{part!r} of {flag!r} is not a group of options", param_hint="--storage-option"
                )
        node[leaf] = _value(text)
    return options


def check_target(
    root: str, flags: tuple[str, ...], options: dict | None, config: str | None
) -> None:
    """Refuse, naming the flag, a target root of an unknown protocol and storage options
    that a local target root would not use."""

    protocol, sep, _ = root.partition("://")
    if sep and protocol not in (*fsspec.available_protocols(), "icechunk"):
        raise click.UsageError(
            f"--target-root {root}: unknown protocol {protocol!r} "
            "(a folder, or a URL such as s3://bucket/prefix or icechunk://PATH)"
        )
    if sep and protocol != "icechunk":
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            raise MissingDependency(f"--target-root {root}: {exc}{install_hint(str(exc))}") from exc
    if options and (not sep or protocol in ("file", "local", "icechunk")):
        if not flags:
            raise ArcoforgeError(
                f"{config}: storage_options: unused, the target root {root} is local"
            )
        raise click.UsageError(
            f"--storage-option {flags[0]}: unused, the target root {root} is local"
        )


def _value(text: str):
    """``text`` as JSON if it is JSON (true, 3, "text"), else as it is."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@main.command()
@click.argument("feedstock", type=click.Path(file_okay=False, path_type=Path))
@click.option("--target-root", help="Folder or URL under which each store is written.")
@click.option("--cache", help="Folder where remote inputs are cached (reused between bakes).")
@click.option("--recipe", "recipe_id", help="Bake only the recipe with this id.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [default: cores].")
@click.option(
    "--prune", type=click.IntRange(min=1), help="Bake only the first N inputs per concat dim."
)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="YAML/JSON settings."
)
@click.option("--dry-run", is_flag=True, help="Print the plan (stages, tasks, bytes); run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Structured log lines instead of bars.")
@click.option(
    "--append", is_flag=True, help="Add the inputs the store lacks; refuse gaps and overlaps."
)
@click.option(
    "--skip-failed",
    is_flag=True,
    help="Finish despite inputs that fail after retries; record them, leave fill values.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Fill in the inputs an earlier --skip-failed bake lacks."
)
@click.option("--force", is_flag=True, help="Bake again even if the store is up to date.")
@click.option(
    "--assume-unchanged",
    is_flag=True,
    help="Do not check the store's inputs for changes since it was baked (for archives "
    "too big to list).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "dask", "spark", "beam"]),
    help="Where tasks run [default: local]; settings of each in the config file.",
)
@click.option(
    "--dask-scheduler", metavar="ADDRESS", help="With --engine dask: tcp://host:port of a cluster."
)
@storage_option
@friendly
@json_events
def bake(
    feedstock,
    target_root,
    cache,
    recipe_id,
    workers,
    prune,
    config_file,
    dry_run,
    as_json,
    append,
    skip_failed,
    retry_failed,
    force,
    assume_unchanged,
    engine,
    dask_scheduler,
    storage_option,
    events,
):
    """Bake the recipes of FEEDSTOCK into TARGET_ROOT/STORE_NAME.

    An interrupted bake resumes where it stopped when run again; a store already baked
    from the same recipe and inputs is left as it is (use --force to bake it again).
    """

    config = read_config(config_file)
    engine = engine or config.engine
    if dask_scheduler:
        if engine != "dask":
            raise click.UsageError("--dask-scheduler needs --engine dask")
        config.dask.scheduler = dask_scheduler
    target_root = target_root or config.target_root
    if not target_root:
        raise click.UsageError("give --target-root (or target_root in the config file)")
    _refuse_conflicts(append=append, force=force, retry_failed=retry_failed)
    options = storage_options(storage_option, config.storage_options) or None
    check_target(target_root, storage_option, options, config_file)
    recipes = load_recipes(feedstock, recipe_id or config.recipe)
    if target_root.startswith("icechunk://"):
        stores = [rid for rid, recipe in recipes.items() if not recipe.virtual]
        if stores:
            raise click.UsageError(
                f"--target-root {target_root}: Icechunk targets take references "
                f"(WriteCombinedReference); recipe {stores[0]!r} writes a Zarr store"
            )
    prune, workers = prune or config.prune, workers or config.workers
    console = _console()
    for rid, recipe in recipes.items():
        run_id = new_id()
        if events is not None:
            events.run = run_id
        if dry_run:
            planned = recipe.prune(prune) if prune else recipe
            with cache_for(planned, cache or config.cache) as cache_dir:
                plan = make_plan(
                    planned,
                    normalize_root(target_root),
                    cache=cache_dir,
                    workers=workers or 1,
                    storage_options=options,
                )
                info = describe_plan(plan)
            _emit(
                events,
                console,
                {"event": "plan", "recipe": rid, **info},
                lambda info=info, rid=rid: render_plan(info, console, rid),
            )
            continue
        reporter = events or console_reporter()
        try:
            with logs_to(reporter):
                result = run_bake(
                    recipe,
                    target_root,
                    cache=cache or config.cache,
                    workers=workers,
                    prune=prune,
                    engine=engine,
                    engine_options=config.engine_options(engine),
                    reporter=reporter,
                    force=force,
                    append=append,
                    skip_failed=skip_failed or config.skip_failed,
                    retry_failed=retry_failed,
                    storage_options=options,
                    assume_unchanged=assume_unchanged or config.assume_unchanged,
                    run=RunContext(
                        rid, str(feedstock.resolve()), ("arcoforge", *sys.argv[1:]), run_id
                    ),
                )
        finally:
            reporter.close()
        _emit(
            events,
            console,
            {"event": "summary", "recipe": rid, **result_dict(result)},
            lambda result=result, rid=rid: render_result(result, console, rid),
        )


def _refuse_conflicts(**flags: bool) -> None:
    """Exit 2 naming two flags given together that ask for different bakes."""
    given = [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]
    if len(given) > 1:
        raise click.UsageError(f"{given[0]} and {given[1]} cannot be given together")


def _emit(events, console, record: dict, render: Callable[[], None]) -> None:
    """``record`` as a JSON event to ``events``, if given; else ``render()``."""
    if events is not None:
        fields = dict(record)
        events.event(fields.pop("event"), **fields)
    else:
        render()


@main.command()
@click.argument("feedstock", type=click.Path(file_okay=False, path_type=Path))
@friendly
def lint(feedstock):
    """Check FEEDSTOCK's meta.yaml against its schema and that every recipe builds."""

    for line in run_lint(feedstock):
        click.echo(f"ok  {line}")


@main.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Write into an existing folder.")
@friendly
def init(name, force):
    """Write a new feedstock NAME/ (meta.yaml, recipe.py, sample data) that lints and bakes."""

    folder = write_feedstock(Path(name), force=force)
    quoted = shlex.quote(str(folder))
    click.echo(f"wrote {folder}/: edit recipe.py and meta.yaml, then run:")
    click.echo(f"  arcoforge lint {quoted}")
    click.echo(f"  arcoforge bake {quoted} --target-root ./output --prune 2")


@main.command()
@click.option(
    "--dir",
    "folder",
    default="arcoforge-demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo writes.",
)
@click.option("--days", default=30, show_default=True, type=click.IntRange(2, 3660))
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [default: cores].")
@click.option("--json", "as_json", is_flag=True, help="Structured log lines instead of bars.")
@friendly
def demo(folder, days, workers, as_json):
    """Write an OISST-like archive, serve it over HTTP on loopback, bake it and check it."""

    run_demo(folder, days=days, workers=workers, as_json=as_json)


@main.command()
@click.argument("target")
@click.option(
    "--against",
    "feedstock",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Compare sample inputs of this feedstock's recipe with the store.",
)
@click.option("--recipe", "recipe_id", help="With --against: the recipe that baked TARGET.")
@click.option("--full", is_flag=True, help="Decode every chunk and compare every input.")
@click.option("--cache", help="Folder where remote inputs are cached (with --against).")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@storage_option
@friendly
def validate(target, feedstock, recipe_id, full, cache, as_json, storage_option):
    """Check the store at TARGET: it opens, its CF times decode, its dimension coordinates
    are complete, sorted and unique, every chunk is there and decodes (a sample of them,
    all with --full), and, with --against, that it holds its sources' values.

    Exits with 1 when any check fails.
    """

    url = normalize_root(target)
    against = _recipe_of(feedstock, recipe_id, url) if feedstock else None
    options = storage_options(storage_option) or None
    check = checker_for(url, options)
    report = check(url, storage_options=options, against=against, full=full, cache=cache)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        render_report(report, _console())
    if not report.ok:
        raise ValidationError(report.summary())


def _recipe_of(feedstock: Path, recipe_id: str | None, url: str):
    """The feedstock's recipe named ``recipe_id``, else the one that writes ``url``'s store."""

    recipes = load_recipes(feedstock, recipe_id)
    if len(recipes) == 1:
        return next(iter(recipes.values()))
    name = url.rstrip("/").rpartition("/")[2]
    matching = [r for r in recipes.values() if r.writer.store_name == name]
    if len(matching) != 1:
        raise FeedstockError(f"{feedstock}: {len(recipes)} recipes; choose one with --recipe")
    return matching[0]


@main.group(invoke_without_command=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The records as JSON, one a line.")
@click.pass_context
@friendly
def runs(ctx, limit, as_json):
    """List the bakes run on this machine, newest first ($ARCOFORGE_STATE_DIR/runs, by
    default ~/.local/state/arcoforge/runs); `arcoforge runs show ID` shows one."""

    if ctx.invoked_subcommand is not None:
        return
    records = list_runs(limit)
    if as_json:
        for record in records:
            click.echo(record.model_dump_json())
    else:
        render_runs(records, _console())


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The record as JSON.")
@friendly
def show_run(run_id, as_json):
    """Show the run RUN_ID (any unique prefix of it)."""

    record = find_run(run_id)
    if as_json:
        click.echo(record.model_dump_json(indent=1))
    else:
        render_run(record, _console())


@main.command()
@click.argument(
    "feedstocks",
    nargs=-1,
    required=True,
    metavar="FEEDSTOCK...",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
)
@click.option("--target-root", help="Folder or URL under which the stores were baked.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the site: new, empty, or one this command wrote before.",
)
@click.option(
    "--base-url", metavar="URL", help="Where the site will be published (absolute links)."
)
@click.option("--serve", is_flag=True, help="Then serve the site on 127.0.0.1 until Ctrl-C.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="With --serve: the port [default: 8000; 0 for any free one].",
)
@click.option("--json", "as_json", is_flag=True, help="Structured log lines instead of text.")
@storage_option
@friendly
@json_events
def catalog(feedstocks, target_root, out, base_url, serve, port, as_json, storage_option, events):
    """Build a static website and STAC catalog of the datasets FEEDSTOCK... baked.

    Each recipe's store under --target-root is read (its metadata, two quick-look maps) with
    its run records; the site goes to --out (index.html, a page per dataset, stac/), which
    works from disk or any static host. Run it again to update only what changed.
    """
    if not target_root:
        raise click.UsageError("give --target-root (the folder or URL the stores are under)")
    if base_url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url):
        raise click.UsageError(f"--base-url {base_url}: not an http:// or https:// URL")
    if port is not None and not serve:
        raise click.UsageError("--port needs --serve")
    options = storage_options(storage_option) or None
    check_target(target_root, storage_option, options, None)
    require("jinja2", "catalog sites")
    from arcoforge.catalog.build import build_catalog
    from arcoforge.catalog.preview import serve as serve_site

    with logs_to(events or PlainReporter()):  # a skipped run record's warning, say
        records, done = build_catalog(
            feedstocks,
            normalize_root(target_root),
            out,
            base_url=base_url,
            storage_options=options,
            described=lambda record: _described(events, record),
        )
    counts = {k: len(getattr(done, k)) for k in ("written", "unchanged", "removed", "kept")}
    if events is not None:
        events.event("summary", out=str(out), datasets=len(records), **counts)
    else:
        kept = f", {counts['kept']} changed by hand kept" if counts["kept"] else ""
        click.echo(
            f"{out / 'index.html'}: {count(len(records), 'dataset')}; "
            f"{count(counts['written'], 'file')} written, {counts['unchanged']} unchanged, "
            f"{counts['removed']} removed{kept}"
        )
    if serve:
        serve_site(out, 8000 if port is None else port, lambda url: _serving(events, url))
        click.echo("stopped", err=True)


def _described(events, record) -> None:
    """A dataset's status (and why it could not be read) as a line or a JSON event."""
    if events is not None:
        events.event("dataset", dataset=record.id, status=record.status, error=record.error)
    else:
        why = f": {record.error}" if record.error else ""
        click.echo(f"{record.status:<11} {record.id}{why}")


def _serving(events, url: str) -> None:
    """Where the preview is, as a line or a JSON event."""
    if events is not None:
        events.event("serving", url=url)
    else:
        click.echo(f"serving {url} (Ctrl-C to stop)")
