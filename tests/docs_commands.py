"""The commands README.md and the pages under docs/ show, as tests/test_docs_commands.py runs them: where each is
(page and line), its text and trailing comment, and the visible note that exempts it ("not run by the tests:
<why>"), plus the placeholders a command may hold and what fills them.

What counts as a command: each line of a fenced ```bash block (a `\\` continuation joined to its next line, `a && b`
two commands, a line that is only a `# comment` none), and an inline code span outside fences that is a whole
command (it starts with one of PROGRAMS and has arguments, or is `python train.py`). Spans that name a program
in prose (`python evaluate.py`, `python -m cifar_lightning.ood.openood`) or show the syntax, not a command
(`python train.py <key>=<value>`), are left out. Other fences (python, json, plain) hold no commands.

A note is either the command's trailing comment holding "not run by the tests: <why>", or an admonition whose
title starts with "Not run by the tests" (`!!! note "Not run by the tests: <why>"`): it covers the next block
after its indented body (a fence, a paragraph or a table), or a fence inside its body. An inline command may also
carry the note on its own line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.services import SLURM_CLUSTER

PROGRAMS = tuple(
    f"python {name}"
    for name in ("train.py", "evaluate.py", "predict.py", "export.py", "serve.py", "-m cifar_lightning")
)
NOTE = re.compile(r"not run by the tests\b:?(.*)", re.IGNORECASE)
ADMONITION = re.compile(r'^\s*(?:!!!|\?\?\?\+?)\s*\w+\s+"([^"]*)"')
FENCE = re.compile(r"^\s*```\s*(\S*)")
SPAN = re.compile(r"`([^`]+)`")
TEMPLATE = "<key>"  # `python train.py <key>=<value>`: the syntax, not a command

#: A run folder's name in the tests' workspace: `<date>_<time>` becomes it, and it matches 'logs/train/runs/2026-11-*'.
RUN_NAME = "2026-11-27_10-00-00"
STUDY = "report_cnn"


@dataclass(frozen=True)
class Command:
    """One command as a page shows it: `text` without its trailing comment; `note` the reason after "not run by
    the tests" ('' for a note without one), None when the command has no note."""

    page: str
    line: int
    text: str
    comment: str = ""
    note: str | None = None

    @property
    def args(self) -> list[str]:
        return shlex.split(self.text)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def split_comment(line: str) -> tuple[str, str]:
    """`cmd args  # comment` -> ('cmd args', 'comment'): a `#` after a blank and outside quotes starts the comment."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


def note_of(text: str) -> str | None:
    """The reason a "not run by the tests: <why>" text gives ('' if none), None when it holds no such note."""
    match = NOTE.search(text)
    if match is None:
        return None
    reason = match.group(1).strip().rstrip(".")
    return reason[:-1] if reason.endswith(")") and reason.count(")") > reason.count("(") else reason


def fence_commands(page: str, lines: list[tuple[int, str]], block_note: str | None) -> list[Command]:
    """The commands of one ```bash block: (line number, text) pairs in, continuations joined."""
    commands, pending, start = [], "", 0
    for number, raw in lines:
        text, comment = split_comment(raw.strip())
        if text.endswith("\\"):
            pending, start = pending + text[:-1].strip() + " ", start or number
            continue
        text, first, pending, start = (pending + text).strip(), start or number, "", 0
        if not text:
            continue
        note = note_of(comment)
        for part in text.split(" && "):
            commands.append(Command(page, first, part.strip(), comment, block_note if note is None else note))
    return commands


def is_command(span: str) -> bool:
    """A code span that is a whole command: a program of PROGRAMS with arguments, or `python train.py` alone."""
    program = next((p for p in PROGRAMS if span == p or span.startswith((p + " ", p + "."))), None)
    arguments = program is not None and len(span.split()) > len(program.split()) + program.endswith(
        "-m cifar_lightning"
    )
    return TEMPLATE not in span and (arguments or span == "python train.py")


def inline_commands(page: str, number: int, line: str, block_note: str | None) -> list[Command]:
    """The whole commands among a line's code spans (a note on the line or the block's covers them)."""
    line_note = note_of(SPAN.sub("", line))
    note = block_note if line_note is None else line_note
    spans = (span.strip() for span in SPAN.findall(line))
    return [Command(page, number, span, "", note) for span in spans if is_command(span)]


def page_commands(path: Path) -> list[Command]:
    """Every command `path` shows, with its note."""
    page, commands = path.relative_to(ROOT).as_posix(), []
    pending: str | None = None  # an admonition's note, waiting for the block it covers
    in_body = block = False  # inside an admonition's indented body; inside the block the note covers
    block_note: str | None = None
    fence: str | None = None
    fenced: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(line)
        if fence is not None:
            if opening and not opening.group(1):
                if fence == "bash":
                    commands += fence_commands(page, fenced, block_note)
                fence, fenced, block_note, block = None, [], None, False
            else:
                fenced.append((number, line))
            continue
        if opening:
            fence = opening.group(1)
            block_note, pending = pending, None
            continue
        if match := ADMONITION.match(line):
            title = match.group(1)
            pending = note_of(title) if title.lower().startswith("not run by the tests") else None
            in_body, block, block_note = True, False, None
            continue
        if in_body and (not line.strip() or line.startswith(("    ", "\t"))):
            continue
        if in_body:
            in_body = False
        if not line.strip():
            block, block_note = False, None
            continue
        if not block:
            block, block_note, pending = True, pending, None
        commands += inline_commands(page, number, line, block_note)
    return commands


def all_commands(pages: list[Path] | None = None) -> list[Command]:
    return [command for path in pages or doc_pages() for command in page_commands(path)]


# Placeholders, in the order they are filled; paths are relative to the workspace the commands run in.
RUN_PATH = f"logs/train/runs/{RUN_NAME}"
PLACEHOLDERS = [
    ("logs/train/runs/<date>_<time>", RUN_PATH),
    ("logs/train/multiruns/<date>_<time>", f"logs/train/multiruns/{RUN_NAME}"),
    ("<date>_<time>", RUN_NAME),
    ("<study>", STUDY),
    ("<run>", RUN_PATH),
    ("data.data_dir=<folder>", "data.data_dir=<data>"),
    ("<folder>", "photos/"),
]
UNKNOWN = re.compile(r"<[^>]*>?|\.\.\.|(?<![\w.=/-])[A-Z][A-Z0-9_]+(?![\w.=/-])")


def fill(text: str, data_dir: Path) -> list[str]:
    """A command's arguments with their placeholders filled (a run folder, a sweep, a study, images, this machine's
    data); a placeholder not known here raises ValueError naming it."""
    for placeholder, value in PLACEHOLDERS:
        text = text.replace(placeholder, value)
    text = text.replace("<data>", str(data_dir)).replace("../shared/data", str(data_dir))
    text = re.sub(r"\brun_dir=\.\.\.(?=\s|$)", f"run_dir={RUN_PATH}", text)
    text = re.sub(r"\bckpt=\.\.\.(?=\s|$)", f"ckpt={RUN_PATH}/checkpoints/best.ckpt", text)
    if unknown := UNKNOWN.search(text):
        raise ValueError(f"a placeholder the tests do not know: {unknown.group(0)!r}")
    return shlex.split(text)


# Which test runs a command.
ENTRY_NAMES = ("train", "evaluate", "predict", "export", "serve")
MODULES = ("cifar_lightning.runs", "cifar_lightning.ablation", "cifar_lightning.hpo", "cifar_lightning.ood.openood")
MODULES += ("cifar_lightning.config",)
SERVERS = (("tensorboard",), ("mlflow", "ui"), ("mkdocs", "serve"))
EXIT_STATUS = re.compile(r"exit status (\d+)")


def entry_of(command: Command) -> str | None:
    """train, evaluate, ... for `python <entry>.py ...`, else None."""
    args = command.args
    if len(args) >= 2 and args[0] == "python" and args[1] in [f"{name}.py" for name in ENTRY_NAMES]:
        return args[1].removesuffix(".py")
    return None


def runner_of(command: Command) -> str | None:
    """The name of the runner that handles the command, None if none does."""
    args = command.args
    if entry_of(command):
        return "entry"
    if args[:2] == ["python", "-m"] and len(args) > 2 and args[2] in MODULES:
        return "module"
    if any(tuple(args[: len(server)]) == server for server in SERVERS):
        return "server"
    if args[:3] == ["pip", "install", "-e"]:
        return "pip"
    if [arg for arg in args if "=" not in arg or arg.startswith("-")][:1] == ["pytest"]:
        return "pytest"
    if args[:1] == ["curl"]:
        return "curl"
    return None


def expected_status(command: Command) -> int:
    """The exit status the page's comment promises ("exit status 2"), 0 if it promises none."""
    match = EXIT_STATUS.search(command.comment)
    return int(match.group(1)) if match else 0


COMMANDS = all_commands()
RUN = [command for command in COMMANDS if command.note is None]
NOTED = [command for command in COMMANDS if command.note is not None]


def by_runner(name: str, entry: str | None = None) -> list:
    """One param per distinct command of that runner (and entry point), at the first place it is shown, named by
    page:line; commands that differ only in their data or log folder are one."""
    seen: dict[str, Command] = {}
    for command in RUN:
        if runner_of(command) == name and (entry is None or entry_of(command) == entry):
            seen.setdefault(same_run(command), command)
    return [
        pytest.param(command, id=f"{command.page}:{command.line}", marks=uses_slurm(command))
        for command in seen.values()
    ]


def uses_slurm(command: Command) -> list:
    """The Slurm group's mark for a command that submits to a cluster (tests/services.py)."""
    return [SLURM_CLUSTER] if "hydra/launcher=slurm" in command.text else []


def same_run(command: Command) -> str:
    """The command without its data.data_dir and paths.log_dir (the tests set their own)."""
    words = command.text.split()
    return " ".join(word for word in words if not word.startswith(("data.data_dir=", "paths.log_dir=")))
