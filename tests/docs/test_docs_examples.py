"""Every example in the user docs runs: the ```python blocks of README.md and docs/**/*.md, and
their ```bash blocks that call ``arcoforge``. docs/contributing.md says the same for writers.

- Each block is one test, named ``FILE:LINE`` (the line of its opening fence).
- A block runs in a new temporary working directory, with its own run-record folder.
- A python block right after another python block of the same page (only prose between
  them) that has no ``<!-- example: ... -->`` comment of its own continues it: same
  namespace, same directory. Its test runs the earlier blocks first unless they just ran.
  An xarray Dataset that a block assigns, or that its last expression gives, is loaded.
- A bash block runs with ``bash -euo pipefail``, ``arcoforge`` being
  ``python -m arcoforge.cli``, and must exit 0 (or ``exit=N``). When an unlabelled block
  (its output) follows it, each line shown must be in what it printed (runs of spaces
  and line breaks read as one space). Bash blocks without an ``arcoforge`` command (installs, benchmarks) are not run.
- An HTML comment on the line before a block prepares what it needs (shlex words):

  ``skip reason="..."``        not run (MAX_SKIPPED, 0: a test fails if any block is)
  ``archive=DIR``              an OISST-like archive in DIR (``days=4 ny=18 nx=36``;
                               ``monthly``: in a folder per month, ``YYYYMM/``)
  ``serve[=URL]``              the archive on a loopback HTTP server; URL in the block
                               becomes the server's (``token=bearer|query``: the server asks
                               for a token, which the block's ``token`` holds)
  ``references=PATH``          the served archive's kerchunk references baked at PATH
                               (``icechunk:PATH``: into an Icechunk repository at PATH)
  ``members=A,B,...``          one file per ensemble member; ``paths`` maps member to file
  ``s3[=ADDRESS]``             a loopback S3 server (moto) with buckets ``bucket`` and
                               ``bakery``: its credentials and address in the environment
                               and in the AWS profile ``arco``; ADDRESS in the block
                               becomes the server's
  ``feedstock=NAME[:ID]``      ``arcoforge init NAME`` (recipe and store named ID)
  ``baked=ROOT``               those feedstocks baked under ROOT
  ``recipe=NAME``              ``recipe``: the first recipe of feedstock NAME; and ``bake``
  ``dask[=ADDRESS]``           a LocalCluster (2 worker processes on 127.0.0.1), started with
                               the block's environment; ADDRESS in the block becomes its
                               scheduler's; the block must run tasks on it
  ``replace="OLD => NEW"``     OLD in the block becomes NEW (``--serve => --serve --port 0``)
  ``interrupt=TEXT``           the commands run until they print an ``http://`` URL, which
                               must answer HTTP 200 with TEXT in its page; then Ctrl-C (SIGINT)
  ``NAME.EXT="TEXT"``          a file written with TEXT (``\\n`` for a new line)
  ``exit=N``, ``cwd=PATH``     expected exit code; the directory the shown output names
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import s3fs
import xarray as xr
from distributed import LocalCluster

from arcoforge import OpenWithKerchunk, WriteCombinedReference, bake, pattern_from_file_sequence
from arcoforge.cli.templates import write_feedstock
from arcoforge.recipe.feedstock import load_recipes
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.httpserver import FileServer

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("**/*.md"))]
MAX_SKIPPED = 0
SHAPE = {"days": "4", "ny": "18", "nx": "36"}
TIMEOUT = 180
WAIT = 60  # seconds an interrupted block has to print its URL
URL = re.compile(r"http://127\.0\.0\.1:\d+/\S*")
TOKEN = "docs-example-token"
CREDENTIALS = {  # how the references' recipe passes the token the server asks for
    "bearer": {"fsspec_open_kwargs": {"headers": {"Authorization": f"Bearer {TOKEN}"}}},
    "query": {"query_string_secrets": {"token": TOKEN}},
}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*example:(.*?)-->\s*$")
ARCOFORGE_COMMAND = re.compile(r"^\s*(?:\w+=\$\()?arcoforge\s", re.MULTILINE)
SETTINGS = {
    "skip", "reason", "archive", "days", "ny", "nx", "monthly", "serve", "token",
    "references", "members", "s3", "feedstock", "baked", "recipe", "dask", "replace",
    "interrupt", "exit", "cwd",
}  # fmt: skip


@dataclass
class Block:
    """One fenced block of a page, with the comment before it and the output after it."""

    page: str
    line: int
    lang: str
    text: str
    settings: dict[str, list[str]]
    output: str | None = None
    follows: Block | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.settings.get(key, [default])[-1]

    def chain(self) -> list[Block]:
        """The blocks this one continues, first to last, and itself."""
        return [*(self.follows.chain() if self.follows else []), self]


def parse_settings(comment: str) -> dict[str, list[str]]:
    """``key=value`` and bare ``key`` words of an example comment; a key may repeat."""
    settings: dict[str, list[str]] = {}
    for word in shlex.split(comment):
        key, _, value = word.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def page_blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page`` in order, outputs attached to the block they follow."""
    lines = (ROOT / page).read_text().splitlines()
    blocks: list[Block] = []
    previous: Block | None = None
    prose = ""
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            prose += lines[i].strip()
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        indent = len(fence.group(1))
        text = "\n".join(line[indent:] for line in lines[i + 1 : end])
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        comment = DIRECTIVE.match(before)
        settings = parse_settings(comment.group(1)) if comment else {}
        lang = fence.group(2)
        if lang == "" and previous is not None and previous.lang == "bash" and not prose:
            previous.output = text
        else:
            block = Block(page, i + 1, lang, text, settings)
            continues = previous is not None and previous.lang == "python"
            if lang == "python" and continues and not comment:
                block.follows = previous
            blocks.append(block)
        previous = blocks[-1] if blocks else None
        prose = ""
        i = end + 1
    return blocks


def runnable(block: Block) -> bool:
    """Python blocks, and bash blocks that call ``arcoforge``."""
    return block.lang == "python" or (
        block.lang == "bash" and ARCOFORGE_COMMAND.search(block.text) is not None
    )


ALL_BLOCKS = [block for page in PAGES for block in page_blocks(page)]
EXAMPLES = [block for block in ALL_BLOCKS if runnable(block)]


@dataclass
class Workspace:
    """A working directory, its fixtures and what a block sees of them."""

    folder: Path
    stack: contextlib.ExitStack
    replace: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    names: dict = field(default_factory=dict)
    cluster: LocalCluster | None = None
    done: Block | None = None

    def text(self, block: Block) -> str:
        """The block as it runs here: the addresses it names replaced by the fixtures'."""
        text = block.text
        for old, new in self.replace.items():
            text = text.replace(old, new)
        return text


def prepare(block: Block, folder: Path, stack: contextlib.ExitStack, request) -> Workspace:
    """Make what ``block``'s comment asks for in ``folder``."""
    space = Workspace(folder, stack)
    space.env["ARCOFORGE_STATE_DIR"] = str(folder.parent / f"{folder.name}-state")
    for key, [*_, value] in block.settings.items():
        if "." in key:
            (folder / key).write_text(value.replace("\\n", "\n") + "\n")
    archive = block.get("archive")
    if archive:
        files = write_archive(block, folder / archive)
    if "serve" in block.settings:
        serve(block, space, folder / archive, files)
    if block.get("members"):
        space.names["paths"] = write_members(folder / "members", block.get("members").split(","))
    if "s3" in block.settings:
        s3_server(block, space, request.getfixturevalue("s3"))
    with pytest.MonkeyPatch.context() as mp:  # its run records go where the block looks
        mp.setenv("ARCOFORGE_STATE_DIR", space.env["ARCOFORGE_STATE_DIR"])
        for name in block.settings.get("feedstock", []):
            feedstock(folder, name, block.get("baked"))
    if block.get("recipe"):
        space.names.update(recipe=first_recipe(folder / block.get("recipe")), bake=bake)
    if "dask" in block.settings:
        dask_cluster(block, space)
    for rule in block.settings.get("replace", []):
        old, new = rule.split(" => ")
        space.replace[old] = new
    return space


def write_archive(block: Block, folder: Path) -> list[Path]:
    """An OISST-like archive in ``folder``, in a folder per month with ``monthly``."""
    shape = {key: int(block.get(key, default)) for key, default in SHAPE.items()}
    files = write_oisst_archive(folder, **shape)
    if "monthly" not in block.settings:
        return files
    moved = []
    for path in files:
        month = folder / re.search(r"\.(\d{6})\d\d\.nc$", path.name).group(1)
        month.mkdir(exist_ok=True)
        moved.append(path.rename(month / path.name))
    return moved


def serve(block: Block, space: Workspace, folder: Path, files: list[Path]) -> None:
    """The archive on a loopback server, asking for the token as the comment says; with
    ``references``, its kerchunk references baked there with that token."""
    how = block.get("token")
    server = FileServer(
        folder, bearer=TOKEN if how == "bearer" else None, token=TOKEN if how == "query" else None
    )
    space.stack.enter_context(server)
    if how:
        space.names["token"] = TOKEN
    if block.get("serve"):
        space.replace[block.get("serve")] = server.url
    target = block.get("references")
    if target:
        urls = [f"{server.url}/{path.relative_to(folder)}" for path in files]
        credential = CREDENTIALS.get(how, {})
        pattern = pattern_from_file_sequence(urls, "time", file_type="netcdf4", **credential)
        if target.startswith("icechunk:"):  # an Icechunk repository at PATH
            parent, store = target.removeprefix("icechunk:").rsplit("/", 1)
            writer = WriteCombinedReference(store, concat_dims=["time"])
            root = f"icechunk://{space.folder / parent}"
        else:
            parent, store, name = target.rsplit("/", 2)
            writer = WriteCombinedReference(store, concat_dims=["time"], output_file_name=name)
            root = space.folder / parent
        bake(pattern | OpenWithKerchunk() | writer, target_root=root, workers=1)


def write_members(folder: Path, members: list[str]) -> dict[str, str]:
    """One two-day file per member, each drawn with its own seed."""
    paths = {}
    for seed, member in enumerate(members):
        files = write_oisst_archive(folder / member, 2, 18, 36, steps_per_file=2, seed=seed)
        paths[member] = str(files[0])
    return paths


def s3_server(block: Block, space: Workspace, options: dict) -> None:
    """Credentials and address of the moto server in the environment and in profile arco."""
    endpoint = options["client_kwargs"]["endpoint_url"]
    region = options["client_kwargs"]["region_name"]
    config, credentials = space.folder.parent / "aws-config", space.folder.parent / "aws-keys"
    config.write_text(f"[profile arco]\nregion = {region}\nendpoint_url = {endpoint}\n")
    keys = f"aws_access_key_id = {options['key']}\naws_secret_access_key = {options['secret']}\n"
    credentials.write_text(f"[arco]\n{keys}")
    space.env.update(
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION=region,
        AWS_ACCESS_KEY_ID=options["key"],
        AWS_SECRET_ACCESS_KEY=options["secret"],
    )
    space.unset += ["AWS_PROFILE", "AWS_SESSION_TOKEN"]
    fs = s3fs.S3FileSystem(**options)
    for bucket in ("bucket", "bakery"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    if block.get("s3"):
        space.replace[block.get("s3")] = endpoint


def feedstock(folder: Path, name: str, baked: str | None) -> None:
    """``arcoforge init NAME``, its recipe and store named ID; baked under ``baked``."""
    name, _, ident = name.partition(":")
    made = write_feedstock(folder / (ident or name))
    if ident:
        made = made.rename(folder / name)
    for recipe in load_recipes(made).values() if baked else ():
        bake(recipe, target_root=folder / baked, workers=1)


def first_recipe(folder: Path):
    """The first recipe of the feedstock in ``folder``."""
    return next(iter(load_recipes(folder).values()))


def dask_cluster(block: Block, space: Workspace) -> None:
    """A LocalCluster of 2 worker processes on 127.0.0.1, its workers started with the
    block's environment (the S3 server's address and credentials)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in space.env.items():
            mp.setenv(name, value)
        for name in space.unset:
            mp.delenv(name, raising=False)
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            protocol="tcp://",
            dashboard_address=None,
        )
    space.cluster = space.stack.enter_context(cluster)
    if block.get("dask"):
        space.replace[block.get("dask")] = cluster.scheduler_address


@pytest.fixture(scope="module")
def workspaces():
    """The workspace of each chain of python blocks, kept while its blocks run in turn."""
    spaces: dict[str, Workspace] = {}
    yield spaces
    for space in spaces.values():
        space.stack.close()


def workspace(block: Block, spaces: dict, tmp_path_factory, request) -> Workspace:
    """The workspace in which ``block`` runs next: the one its chain left, or a new one in
    which the earlier blocks of its chain have run."""
    head = block.chain()[0]
    space = spaces.get(head.id)
    if space is not None and (space.done is block.follows):
        return space
    if space is not None:
        space.stack.close()
    stack = contextlib.ExitStack()
    if head.get("cwd"):  # a short folder, so that the paths it prints wrap as the docs show
        folder = Path(tempfile.mkdtemp(prefix="arcoforge-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
    else:
        folder = tmp_path_factory.mktemp(re.sub(r"\W", "_", head.id))
    spaces[head.id] = space = prepare(head, folder, stack, request)
    return space


def test_few_examples_are_skipped():
    skipped = [block.id for block in EXAMPLES if "skip" in block.settings]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert all(block.get("reason") for block in EXAMPLES if "skip" in block.settings)


def test_example_comments_are_understood():
    """A comment before a block that is not run (yaml, an install) would be ignored, and so
    would a setting misspelled."""
    commented = [block.id for block in ALL_BLOCKS if block.settings and not runnable(block)]
    assert commented == []
    unknown = [
        f"{block.id}: {key}"
        for block in ALL_BLOCKS
        for key in block.settings
        if key not in SETTINGS and "." not in key
    ]
    assert unknown == []
    assert sum(block.lang == "python" for block in EXAMPLES) >= 7


@pytest.mark.parametrize("block", EXAMPLES, ids=[block.id for block in EXAMPLES])
def test_example(block: Block, workspaces, tmp_path_factory, request, monkeypatch):
    if "skip" in block.settings:
        pytest.skip(block.get("reason"))
    space = workspace(block, workspaces, tmp_path_factory, request)
    monkeypatch.chdir(space.folder)
    for name, value in space.env.items():
        monkeypatch.setenv(name, value)
    for name in space.unset:
        monkeypatch.delenv(name, raising=False)
    todo = block.chain()
    if space.done is not None:
        todo = todo[todo.index(space.done) + 1 :]
    space.done = None
    for each in todo:
        if each.lang == "python":
            run_python(each, space)
        else:
            run_bash(each, space)
        space.done = each
    if space.cluster is not None:
        assert space.cluster.scheduler.transition_counter > 0, "nothing ran on the Dask cluster"


def run_python(block: Block, space: Workspace) -> None:
    """Run the block in the workspace's namespace; load the Datasets it gives."""
    code = "\n" * block.line + space.text(block)
    tree = ast.parse(code, filename=block.id)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    names = space.names
    exec(compile(tree, str(ROOT / block.page), "exec"), names)
    given = []
    if last is not None:
        given.append(
            eval(compile(ast.Expression(last.value), str(ROOT / block.page), "eval"), names)
        )
    assigned = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    given += [names[name] for name in sorted(assigned) if name in names]
    for value in given:
        if isinstance(value, xr.Dataset):
            value.load()


def run_bash(block: Block, space: Workspace) -> None:
    """Run the block as a bash script, ``arcoforge`` being this Python's ``arcoforge.cli``;
    check its exit code and the output shown after it."""
    command = f"{shlex.quote(sys.executable)} -m arcoforge.cli"
    prelude = f'set -euo pipefail\narcoforge() {{ {command} "$@"; }}\n'
    env = {**os.environ, **space.env, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb"}
    for name in space.unset:
        env.pop(name, None)
    script = ["bash", "-c", prelude + space.text(block)]
    if "interrupt" in block.settings:
        proc = interrupted(script, space.folder, env, block.get("interrupt"))
    else:
        proc = subprocess.run(
            script, cwd=space.folder, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
    printed = proc.stdout + proc.stderr
    expected = int(block.get("exit", "0"))
    assert proc.returncode == expected, f"{block.id}: exit {proc.returncode}\n{printed}"
    if block.output:
        folder = block.get("cwd")
        if folder:
            printed = printed.replace(str(space.folder), folder)
        words = " ".join(printed.split())  # a long line wraps in a table cell
        for line in block.output.splitlines():
            assert " ".join(line.split()) in words, f"{block.id}: {line!r} not printed:\n{printed}"


def interrupted(script: list[str], folder: Path, env: dict, text: str):
    """Run ``script`` until it prints an ``http://`` URL on loopback; check that the URL
    answers HTTP 200 with ``text`` in its page, then send Ctrl-C (SIGINT) to its process
    group and return what it printed and its exit code."""
    proc = subprocess.Popen(
        script,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # SIGINT reaches bash and the command, as Ctrl-C would
    )
    lines: list[str] = []
    try:
        url = wait_for_url(proc, lines)
        with urllib.request.urlopen(url, timeout=WAIT) as answer:
            assert answer.status == 200, f"{url}: HTTP {answer.status}"
            page = answer.read().decode()
        assert text in page, f"{url}: {text!r} not in the page:\n{page[:500]}"
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(script, proc.returncode, "".join(lines) + rest, "")


def wait_for_url(proc: subprocess.Popen, lines: list[str]) -> str:
    """The first loopback URL ``proc`` prints; its lines go to ``lines``. A process that
    prints none within ``WAIT`` seconds is killed."""
    timer = threading.Timer(WAIT, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            found = URL.search(line)
            if found:
                return found.group(0)
    finally:
        timer.cancel()
    raise AssertionError(f"no URL printed (it ended, or {WAIT} s passed):\n{''.join(lines)}")
