"""The slow half of tests/test_docs_commands.py: every command README.md and docs/ show, run as a user runs it
(its module docstring lists what each runner appends and checks). The commands run in a workspace folder (the
`workspace` fixture) so that their relative paths (logs/..., photos/, cat.jpg) mean what the pages say."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image
from torchvision.datasets import CIFAR10

from tests.ablation.jobs import write_seed_sweep
from tests.conftest import DATA_DIR, QUIET
from tests.docs_commands import RUN_NAME, STUDY, Command, by_runner, expected_status, fill
from tests.helpers import ROOT
from tests.services import require_slurm
from tests.serving_fixtures import free_port, wait_until_serving

pytestmark = pytest.mark.slow  # each a process start (10-60 s here); the default suite composes and checks them

#: Appended to every train.py command. A resume takes only overrides that cannot change a result: SHORT_RESUME, and
#: trainer.max_epochs=2 in place of the command's own (the tiny run it continues completed its one epoch).
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    *QUIET,
]
SHORT_RESUME = ["trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]
TIMEOUT = 900


@pytest.fixture(scope="module")
def workspace(tiny_run, data_dir, tmp_path_factory) -> Path:
    """A folder laid out as the pages assume: logs/train/runs/<RUN_NAME> (a copy of the tiny run),
    logs/train/multiruns/<RUN_NAME> (a synthetic ablation sweep), logs/train/hpo/report_cnn (a 2-trial study),
    photos/ (CIFAR-10 test images as JPEGs, one in photos/more/), cat.jpg, my_images/ and small OOD sets in ood/."""
    space = tmp_path_factory.mktemp("docs_workspace")
    shutil.copytree(tiny_run[0], space / "logs/train/runs" / RUN_NAME)
    write_seed_sweep(space / "logs/train/multiruns" / RUN_NAME, seed=0)
    write_study(space / "logs/train/hpo" / STUDY, tiny_run[0])
    test = CIFAR10(str(data_dir), train=False)
    for index, folder in enumerate(["photos", "photos", "photos", "photos/more", "my_images", "my_images"]):
        (space / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.data[index]).save(space / folder / f"{index}.jpg")
    Image.fromarray(test.data[8]).save(space / "cat.jpg")
    write_ood_sets(space / "ood")
    return space


def write_study(sweep: Path, run: Path) -> None:
    """A finished Optuna study of two trials in sweep/optuna.db, trial_0 a copy of the tiny run."""
    import optuna
    from optuna.distributions import FloatDistribution

    from cifar_lightning.hpo.study import (
        OVERRIDES,
        RUN_DIR,
        STATUS,
        TASK_OVERRIDES,
        build_sampler,
        default_storage,
        open_storage,
        open_study,
    )

    study = open_study(open_storage(default_storage(sweep)), STUDY, "val_loss", "minimize", build_sampler(None), None)
    study.set_user_attr(TASK_OVERRIDES, ["trainer.max_epochs=4"])
    for number, (lr, loss) in enumerate([(0.01, 1.2), (0.05, 0.9)]):
        trial = study.ask({"optim.lr": FloatDistribution(0.001, 0.1, log=True)})
        trial.report(loss, 0)
        trial.set_user_attr(OVERRIDES, [f"optim.lr={lr}"])
        trial.set_user_attr(STATUS, "completed")
        trial.set_user_attr(RUN_DIR, str(sweep / f"trial_{number}"))
        study.tell(trial, loss, state=optuna.trial.TrialState.COMPLETE)
    shutil.copytree(run, sweep / "trial_0")


def write_ood_sets(folder: Path) -> None:
    """Small OOD sets in the documented .npz form (an ood.data_dir, for speed)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("cifar100", (32, 32, 3)), ("mnist", (28, 28)), ("fashion_mnist", (28, 28))):
        images = rng.integers(0, 256, (200, *shape), dtype=np.uint8)
        np.savez_compressed(folder / f"{name}_test.npz", images=images, labels=rng.integers(0, 10, 200))


def run(args: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """`python <script> ...` or `python -m <module> ...` as typed in `cwd`, this checkout's code on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    program = ["-m", args[2]] if args[1] == "-m" else [str(ROOT / args[1])]
    rest = args[3:] if args[1] == "-m" else args[2:]
    return subprocess.run(
        [sys.executable, *program, *rest], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_status(command: Command, result: subprocess.CompletedProcess) -> None:
    want = expected_status(command)
    assert result.returncode == want, f"{command}: exit status {result.returncode}, not {want}\n{result.stderr[-3000:]}"


# --- train.py -----------------------------------------------------------------------------------------------


def first_values(args: list[str]) -> list[str]:
    """Each swept key of the command line at its first value (intervals, which the Optuna sweeper samples, kept)."""
    out = []
    for arg, override in zip(args, OverridesParser.create().parse_overrides(args), strict=True):
        discrete = override.is_sweep_override() and override.is_discrete_sweep()
        out.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}" if discrete else arg)
    return out


def hydra_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (-m, --cfg job, ...) apart from the overrides."""
    flags, overrides, takes_value = [], [], False
    for arg in args:
        (flags if arg.startswith("-") or takes_value else overrides).append(arg)
        takes_value = arg in ("--cfg", "-c", "--package", "-p", "--info", "-i") and not takes_value
    return flags, overrides


def shortened(args: list[str], log_dir: Path) -> list[str]:
    """train.py's overrides, shortened as the module docstring says."""
    flags, overrides = hydra_flags(args)
    overrides = first_values(overrides)
    if any(arg.startswith("resume=") for arg in overrides):
        kept = [arg for arg in overrides if not arg.startswith("trainer.max_epochs=")]
        return [*flags, *kept, "trainer.max_epochs=2", *SHORT_RESUME, f"data.data_dir={DATA_DIR}"]
    extra = ["ablation.seeds=1"] if "+ablation=all" in overrides else []
    extra += ["hydra.sweeper.n_trials=2"] if any(arg.startswith("hparams_search=") for arg in overrides) else []
    return [*flags, *overrides, *SHORT, *extra, f"data.data_dir={DATA_DIR}", f"paths.log_dir={log_dir}"]


def job_folders(log_dir: Path) -> list[Path]:
    """Every Hydra job folder (one holding .hydra/) below log_dir."""
    return sorted(path.parent for path in log_dir.rglob(".hydra"))


@pytest.mark.parametrize("command", by_runner("entry", "train"))
def test_train_command_runs(command, workspace, tmp_path):
    """Exit 0 and a metrics.json in every job folder (or the refusal the page promises)."""
    args = fill(command.text, DATA_DIR)
    if "hydra/launcher=slurm" in args:  # a local cluster's command (docs/scale.md)
        require_slurm()
    if any(arg.startswith("resume=") for arg in args):  # a resume writes into its run: a fresh copy each
        shutil.copytree(workspace / "logs/train/runs" / RUN_NAME, tmp_path / "logs/train/runs" / RUN_NAME)
        cwd = tmp_path
    else:
        cwd = workspace
    log_dir = tmp_path / "logs_of_this_command"
    result = run([*args[:2], *shortened(args[2:], log_dir)], cwd)
    assert_status(command, result)
    if result.returncode:
        return
    if {"--cfg", "-c", "--info", "-i", "--help", "-h"} & set(args):  # Hydra prints, and runs nothing
        assert result.stdout.strip(), f"{command}: printed nothing"
        return
    jobs = job_folders(cwd / "logs/train/runs" if cwd == tmp_path else log_dir)
    assert jobs, f"{command}: no job folder under {log_dir}"
    missing = [str(job) for job in jobs if not (job / "metrics.json").is_file()]
    assert not missing, f"{command}: no metrics.json in {missing}\n{result.stderr[-3000:]}"


# --- evaluate.py, predict.py, export.py -------------------------------------------------------------------


def ood_settings(args: list[str], workspace: Path) -> list[str]:
    """evaluate.py's OOD detection on the small sets, with fewer fitting and noise images (none if ood=none)."""
    if "ood=none" in args:
        return []
    dropped = {arg.removeprefix("~ood.sets.") for arg in args if arg.startswith("~ood.sets.")}
    noise = [f"ood.sets.{name}.n=200" for name in ("gaussian_noise", "uniform_noise") if name not in dropped]
    return [f"ood.data_dir={workspace / 'ood'}", "ood.fit_images=500", *noise]


def robustness_settings(args: list[str]) -> list[str]:
    """The corruptions on 200 test images per corruption and severity (75 x 10,000 would take minutes), unless the
    command sets its own number."""
    asked = any(arg.startswith("robustness=") and arg != "robustness=none" for arg in args)
    return ["robustness_images=200"] if asked and not any(a.startswith("robustness_images=") for a in args) else []


@pytest.mark.parametrize("command", by_runner("entry", "evaluate"))
def test_evaluate_command_runs(command, workspace, tmp_path):
    """Exit 0, and the report shows what the command asked for (Grad-CAM settings, TTA, an added OOD set)."""
    args, out = fill(command.text, DATA_DIR), tmp_path / "out"
    environment = [f"data.data_dir={DATA_DIR}", f"hydra.run.dir={out}", "progress=false"]
    shortened = [*ood_settings(args[2:], workspace), *robustness_settings(args[2:])]
    result = run([*args, *environment, *shortened], workspace)
    assert_status(command, result)
    summary = json.loads((out / "evaluation.json").read_text())
    assert (out / "report.html").is_file() and (out / "ood.json").is_file() == ("ood=none" not in args)
    settings = dict(arg.split("=", 1) for arg in args[2:] if "=" in arg)
    if "gradcam.explain" in settings:
        explained = {"label": "true label", "predicted": "predicted class"}[settings["gradcam.explain"]]
        assert summary["gradcam"] == {
            "layer": settings.get("gradcam.layer", "conv3"),
            "explain": settings["gradcam.explain"],
        }
        assert f"({explained}, layer" in (out / "report.html").read_text()
    if "+ood.sets.mine.path" in settings:
        assert json.loads((out / "ood.json").read_text())["sets"]["mine"]["n"] == 2
    if "tta" in settings:
        assert summary["tta"] == int(settings["tta"])


@pytest.mark.parametrize("command", by_runner("entry", "predict") + by_runner("entry", "export"))
def test_predict_and_export_commands_run(command, workspace, tmp_path):
    """Exit 0, and an output folder with what the program writes."""
    args, out = fill(command.text, DATA_DIR), tmp_path / "out"
    result = run([*args, f"data.data_dir={DATA_DIR}", f"hydra.run.dir={out}"], workspace)
    assert_status(command, result)
    written = sorted(path.name for path in out.iterdir() if path.name != ".hydra")
    assert written, f"{command}: wrote nothing into {out}\n{result.stderr[-2000:]}"


# --- serve.py and curl ----------------------------------------------------------------------------------------


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """A long-running command in its own process group (so that stop() ends all it started), output in `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    program = [sys.executable, str(ROOT / args[1]), *args[2:]] if args[0] == "python" else args
    with open(log, "w") as out:
        return subprocess.Popen(program, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def serving(args: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """serve.py as the page starts it, on a free port of 127.0.0.1: the process and its URL, once /health says 200."""
    port = free_port()
    process = start([*args, f"port={port}", f"data.data_dir={DATA_DIR}"], cwd, log)
    url = f"http://127.0.0.1:{port}"
    problem = wait_until_serving(process, url, TIMEOUT)
    if problem:
        stop(process)
        pytest.fail(f"{shlex.join(args)}: {problem}\n{log.read_text()[-3000:]}")
    return process, url


@pytest.mark.parametrize("command", by_runner("entry", "serve"))
def test_serve_command_serves(command, workspace, tmp_path):
    """It answers /health and a POSTed image (the predicted class among CIFAR-10's), then stops on SIGTERM."""
    process, url = serving(fill(command.text, DATA_DIR), workspace, tmp_path / "serve.log")
    try:
        response = httpx.post(f"{url}/predict", content=(workspace / "cat.jpg").read_bytes(), timeout=120)
        assert response.status_code == 200, response.text
    finally:
        stop(process)


@pytest.fixture(scope="module")
def docs_server(workspace, tmp_path_factory):
    """serve.py run_dir=<the run>, for the pages' curl commands."""
    log = tmp_path_factory.mktemp("docs_server") / "serve.log"
    process, url = serving(["python", "serve.py", f"run_dir=logs/train/runs/{RUN_NAME}"], workspace, log)
    yield url
    stop(process)


@pytest.mark.xdist_group("docs_server")  # under -n N: one worker starts the server they share
@pytest.mark.parametrize("command", by_runner("curl"))
def test_curl_command_gets_a_prediction(command, workspace, docs_server):
    """The page's curl (its port that of the test's server, -sS --fail-with-body added) prints a JSON answer."""
    args = [arg.replace("http://127.0.0.1:8000", docs_server) for arg in command.args]
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args[1:]], cwd=workspace, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-1000:]} {result.stderr}"
    assert isinstance(json.loads(result.stdout), dict)


# --- python -m cifar_lightning.<...>, and the servers ---------------------------------------------------------


@pytest.mark.parametrize("command", by_runner("module"))
def test_module_command_runs(command, workspace):
    """Exit 0 in the workspace (an --out folder made first, so it lands there)."""
    args = fill(command.text, DATA_DIR)
    if "--out" in args:
        (workspace / args[args.index("--out") + 1]).parent.mkdir(parents=True, exist_ok=True)
    result = run(args, workspace)
    assert_status(command, result)


SERVER_FLAGS = {"tensorboard": ["--host", "127.0.0.1", "--port"], "mlflow": ["--host", "127.0.0.1", "--port"]}


@pytest.mark.parametrize("command", by_runner("server"))
def test_server_command_answers(command, workspace, tmp_path):
    """tensorboard / mlflow ui in the workspace, mkdocs serve in the project: HTTP 200 on a free port, then stopped."""
    port, args = free_port(), command.args
    if args[0] == "mkdocs":
        cwd, extra = ROOT, ["--dev-addr", f"127.0.0.1:{port}"]
    else:
        cwd, extra = workspace, [*SERVER_FLAGS[args[0]], str(port)]
    process = start([*args, *extra], cwd, tmp_path / "server.log")
    try:
        assert answers(process, f"http://127.0.0.1:{port}/"), (tmp_path / "server.log").read_text()[-3000:]
    finally:
        stop(process)


def answers(process: subprocess.Popen, url: str, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=10, follow_redirects=True).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False
