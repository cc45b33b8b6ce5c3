"""Every command README.md and the pages under docs/ show is run by a test here, or carries a visible note
saying why it is not ("not run by the tests: <why>", see tests/docs_commands.py for what counts as a command
and as a note). A command with neither fails test_every_command_has_a_runner_or_a_note, naming its page and line.

Default suite (seconds, no training):
- `python train.py|evaluate.py|predict.py|export.py|serve.py ...` is composed in-process with Hydra as written
  (placeholders filled) and checked with the project's schema (cifar_lightning.config.schema.check), as the
  program itself checks it before any work: a renamed key or a bad value on a page fails here. A sweep (-m, or
  a preset that sweeps: +ablation=all, hparams_search=...) composes one job per value of each swept key, the
  command line's and the sweeper's params alike (the other keys at their first value; an interval at its low
  end). A comment saying "exit status N" expects that refusal (1: Hydra's, 2: the schema's).
- `pip install -e ".[X]"`, `pytest`, `pytest -m slow -n 2`: run by .ci/run, not by a test; the tests here
  check that every extra named exists in pyproject.toml and is in [dev], that .ci/run installs `.[dev]` and
  runs each pytest line shown with CIFAR10_DATA_DIR set.

Slow suite (`pytest -m slow -n 2`, which CI runs too; tests/test_docs_commands_run.py): every command runs as a
subprocess, in a workspace folder holding a copy of the tiny run as logs/train/runs/<RUN_NAME>, a synthetic
ablation sweep as logs/train/multiruns/<RUN_NAME>, a 2-trial study as logs/train/hpo/report_cnn, CIFAR-10 test
images as photos/ (JPEGs, one in a subfolder), cat.jpg and my_images/, and small OOD sets:
- train.py, shortened by appending trainer.max_epochs=1, trainer.limit_train_batches=2, limit_val_batches=2,
  limit_test_batches=2, no progress bar or model summary, this machine's data and a log folder of its own;
  ablation.seeds=1 for +ablation=all, hydra.sweeper.n_trials=2 for searches; each swept key of the command
  line at its first value (the default suite composes all of them). It must exit 0 and leave a metrics.json
  in every job folder. A resume continues a fresh copy of the tiny run for one more epoch
  (trainer.max_epochs=2 in place of the command's). Commands that differ only in data.data_dir or
  paths.log_dir run once.
- evaluate.py, predict.py, export.py as written plus this machine's data folder and an output folder; for
  evaluate.py's OOD detection the small sets, 500 fitting images and 200 noise images, and for its corruptions
  200 test images per corruption and severity (unless the command sets robustness_images). Each must exit 0;
  evaluate.py's report must show the Grad-CAM settings, TTA or added OOD set the command asks for.
- serve.py on a free port (port= appended): it must answer GET /health and POST /predict, then stop on SIGTERM;
  the pages' curl commands run against one such server (their port rewritten, -sS --fail-with-body added).
- python -m cifar_lightning.<runs|ablation|hpo|ood.openood|config> on the workspace's folders (an --out path
  lands in the workspace, never in docs/); tensorboard and mlflow ui on a free port until they answer HTTP 200.
"""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from cifar_lightning.config.evaluate import EvaluateSettings
from cifar_lightning.config.inference import ExportSettings, PredictSettings, ServeSettings
from cifar_lightning.config.schema import check
from cifar_lightning.config.train import TrainSettings
from cifar_lightning.errors import ConfigError
from tests.conftest import CONF_DIR, DATA_DIR
from tests.docs_commands import COMMANDS, NOTED, RUN, Command, by_runner, entry_of, expected_status, fill, runner_of
from tests.helpers import ROOT

ENTRIES = {"train": TrainSettings, "evaluate": EvaluateSettings, "predict": PredictSettings}
ENTRIES |= {"export": ExportSettings, "serve": ServeSettings}


def test_the_pages_show_commands():
    """The collector finds the commands (a moved docs/ or a changed fence style would leave nothing to check)."""
    assert len(COMMANDS) >= 30 and {runner_of(command) for command in RUN} >= {"entry", "module", "server", "pip"}


def test_every_command_has_a_runner_or_a_note():
    orphans = [f"{command}" for command in RUN if runner_of(command) is None]
    assert not orphans, "commands no test runs; add a runner or a visible note:\n" + "\n".join(orphans)


@pytest.mark.parametrize("command", [pytest.param(c, id=f"{c.page}:{c.line}") for c in NOTED])
def test_noted_command(command):
    """Each command the tests do not run says why (`pytest -rs` lists them)."""
    assert command.note, f"{command}: its note gives no reason after 'not run by the tests:'"
    pytest.skip(f"{command} -- not run by the tests: {command.note}")


def test_every_placeholder_is_known():
    """Every argument of a command the tests run fills (an unknown placeholder names itself here)."""
    problems = []
    for command in RUN:
        if runner_of(command) in ("entry", "module"):
            try:
                fill(command.text, DATA_DIR)
            except ValueError as exc:
                problems.append(f"{command}: {exc}")
    assert not problems, "\n".join(problems)


# --- Default suite: python <entry>.py composed and checked -------------------------------------------------


def parsed(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Hydra's reading of the overrides: the plain ones, and each swept key with the values it takes (an interval:
    its low end)."""
    plain, swept = [], {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            plain.append(override.input_line)
        elif override.is_discrete_sweep():
            swept[override.get_key_element()] = list(override.sweep_string_iterator())
        else:
            swept[override.get_key_element()] = [str(override.value().start)]
    return plain, swept


def jobs(plain: list[str], swept: dict[str, list[str]]) -> list[list[str]]:
    """Overrides of one job per value of each swept key, the others at their first value."""
    if not swept:
        return [plain]
    first = {key: values[0] for key, values in swept.items()}
    runs = []
    for key, values in swept.items():
        runs += [plain + [f"{k}={value if k == key else v}" for k, v in first.items()] for value in values]
    return runs


def composed(entry: str, overrides: list[str], mode: RunMode):
    """The config Hydra composes for `python <entry>.py <overrides>` (what the program receives)."""
    return GlobalHydra.instance().hydra.compose_config(entry, overrides, run_mode=mode, with_log_configuration=False)


def checked(entry: str, overrides: list[str], mode: RunMode, tmp_path) -> None:
    """Compose and check one job as the program does before any work."""
    cfg = composed(entry, overrides, mode)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    check(cfg, entry, "nothing was done", root=ENTRIES[entry])


def sweep_jobs(entry: str, overrides: list[str], multirun: bool) -> tuple[list[list[str]], RunMode]:
    """The jobs of a command: one for a run; for a sweep, those of the command line's and the sweeper's params."""
    plain, swept = parsed(overrides)
    mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    cfg = composed(entry, plain, mode)
    if multirun or cfg.hydra.mode == RunMode.MULTIRUN:
        mode = RunMode.MULTIRUN
        params = OmegaConf.to_container(cfg.hydra.sweeper.get("params") or OmegaConf.create(), resolve=True)
        _, from_config = parsed([f"{key}={value}" for key, value in params.items()])
        swept = from_config | swept  # the command line's own values win
    return jobs(plain, swept), mode


def compose_and_check(command: Command, tmp_path) -> None:
    entry, args = entry_of(command), fill(command.text, DATA_DIR)[2:]
    multirun = bool({"-m", "--multirun"} & set(args))
    if {"--cfg", "-c", "--info", "--help", "-h"} & set(args):
        args = args[: min(args.index(a) for a in args if a.startswith("-") and a not in ("-m", "--multirun"))]
    overrides = [arg for arg in args if arg not in ("-m", "--multirun")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        runs, mode = sweep_jobs(entry, overrides, multirun)
        for job in runs:
            checked(entry, job, mode, tmp_path)


@pytest.mark.parametrize("command", by_runner("entry"))
def test_entry_command_composes(command, tmp_path):
    """The command's config composes and passes the schema check (or is refused as its comment says)."""
    status = expected_status(command)
    if status == 0:
        compose_and_check(command, tmp_path)
        return
    refusal = {1: HydraException, 2: ConfigError}[status]
    with pytest.raises(refusal):
        compose_and_check(command, tmp_path)


# --- Default suite: what .ci/run runs --------------------------------------------------------------------


def extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


@pytest.mark.parametrize("command", by_runner("pip"))
def test_pip_install_names_extras_that_dev_includes(command):
    """`pip install -e ".[X]"`: X is an extra, [dev] includes it, and .ci/run installs [dev] (so CI installs it)."""
    target = command.args[3]
    named = re.fullmatch(r"\.\[([\w,]+)\]", target)
    assert named, f"{command}: not an editable install of an extra of this project"
    dev = " ".join(extras()["dev"])
    for extra in named.group(1).split(","):
        assert extra in extras(), f"{command}: pyproject.toml has no extra [{extra}]"
        assert extra == "dev" or re.search(rf"cifar-lightning\[[\w,]*\b{extra}\b", dev), f"[dev] lacks [{extra}]"
    assert any("pip install" in line and '-e ".[dev]"' in line for line in ci_lines()), ".ci/run installs no [dev]"


@pytest.mark.parametrize("command", by_runner("pytest"))
def test_pytest_commands_are_what_ci_runs(command):
    """`pytest`, `pytest -m slow -n 2`, `CIFAR10_DATA_DIR=... pytest`: .ci/run runs that line, with the data set."""
    words = [arg for arg in command.args if not re.match(r"[A-Z0-9_]+=", arg)]
    lines = ci_lines()
    assert shlex.join(words) in lines, f"{command}: .ci/run does not run `{shlex.join(words)}`"
    assert any(line.startswith("export CIFAR10_DATA_DIR=") for line in lines), ".ci/run sets no CIFAR10_DATA_DIR"
