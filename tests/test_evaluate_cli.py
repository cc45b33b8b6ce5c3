"""evaluate.py as a user runs it: a bad checkpoint or a missing one stops with one `error:` line
and exit status 2; a real checkpoint gives a run directory under logs/evaluate/runs/; every
`python evaluate.py ...` command in README.md runs as written."""

import csv
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.models import ReportCNN
from tests.conftest import DATA_DIR
from tests.helpers import ROOT, assert_refused, assert_report_shows, only_run_dir, run_entry_point


def run_evaluate(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    """evaluate.py writing under log_dir, without progress bars."""
    return run_entry_point("evaluate.py", f"paths.log_dir={log_dir}", "progress=false", *overrides)


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "no.ckpt"
    assert_refused(run_evaluate(f"ckpt={missing}", log_dir=tmp_path / "logs"), str(missing), "does not exist")


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_truncated_checkpoint(tmp_path):
    whole, short = tmp_path / "whole.ckpt", tmp_path / "short.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in ReportCNN().state_dict().items()}}, whole)
    short.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_refused(run_evaluate(f"ckpt={short}", log_dir=tmp_path / "logs"), str(short), "truncated or corrupt")


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_neither_ckpt_nor_run_dir(tmp_path):
    assert_refused(run_evaluate(log_dir=tmp_path / "logs"), "neither ckpt nor run_dir", "ckpt=", "run_dir=")


@pytest.mark.slow  # one more CLI start: the first error check runs by default
def test_unknown_key_is_refused_by_hydra(tmp_path):
    result = run_evaluate("gradcam.layr=conv2", log_dir=tmp_path / "logs")
    assert result.returncode == 1 and "Key 'layr' is not in struct" in result.stderr, result.stderr


def test_a_real_checkpoint_is_evaluated(tmp_path, tiny_run, data_dir):
    """The shared tiny run through the CLI: the figures it writes are the training run's own test figures (the
    run tested on all 10,000 images), the CSV is the JSON's confusion matrix, and report.html shows them."""
    run, metrics = tiny_run
    result = run_evaluate(
        f"run_dir={run}", f"data.data_dir={data_dir}", "gradcam.count=2", "ood=none", log_dir=tmp_path / "logs"
    )
    assert result.returncode == 0, result.stderr
    out = only_run_dir(tmp_path / "logs", job="evaluate")
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["checkpoint"] == str(run / "checkpoints" / "best.ckpt") and summary["num_images"] == 10_000
    assert summary["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert summary["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert summary["confusion"] == metrics["test_confusion"]
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert [[int(n) for n in row[1:]] for row in rows[1:]] == summary["confusion"]
    assert f"test_acc={summary['test_acc']:.4f}" in (out / "evaluate.log").read_text()
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 4 + 4  # confusion matrix, two galleries, curves; 2 Grad-CAM overlays of each gallery
    assert_report_shows((out / "report.html").read_text(encoding="utf-8"), summary["test_acc"], pngs)


def test_a_bad_ood_setting_is_refused(tmp_path):
    result = run_evaluate("ckpt=any.ckpt", "ood.detectors=[msp,mystery]", log_dir=tmp_path / "logs")
    assert_refused(
        result,
        "invalid `ood` config: ood.detectors must be a list of distinct names among msp, energy",
        "got ['msp', 'mystery']",
        "python evaluate.py ood.detectors=<value>",
    )


@pytest.mark.slow  # one more CLI start: the first error check runs by default
def test_a_boolean_gradcam_explain_is_refused(tmp_path):
    """gradcam.explain=true is a boolean to Hydra, not a class: one error naming the values it takes."""
    result = run_evaluate("ckpt=any.ckpt", "gradcam.explain=true", log_dir=tmp_path / "logs")
    assert_refused(
        result,
        "invalid `gradcam` config: gradcam.explain must be one of predicted, label, got True",
        "as booleans",
        "python evaluate.py gradcam.explain=<value>",
    )


def test_offline_without_the_ood_sets_nothing_is_written(tmp_path, tiny_run, data_dir):
    """The issue's case: only CIFAR-10 on the machine, no download. One error, and no evaluation.json, figures
    or gradcam/ in the run directory (Hydra's own .hydra/ and evaluate.log are all it holds)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-batches-py").symlink_to(data_dir / "cifar-10-batches-py", target_is_directory=True)
    result = run_evaluate(
        f"run_dir={tiny_run[0]}", f"data.data_dir={data}", "data.download=false", log_dir=tmp_path / "logs"
    )
    out = only_run_dir(tmp_path / "logs", job="evaluate")
    assert sorted(path.name for path in out.iterdir()) == [".hydra", "evaluate.log"]
    assert_refused(
        result,
        f"{data / 'ood' / 'cifar100_test.npz'} does not exist",
        "fashion_mnist_test.npz",
        "ood=none",
        "data.download=true",
    )


def readme_evaluate_commands() -> list[list[str]]:
    """Every `python evaluate.py ...` line in README.md's fenced code blocks, split as a shell splits it (its
    trailing comment dropped)."""
    commands, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and line.strip().startswith("python evaluate.py"):
            commands.append(shlex.split(line, comments=True))
    return commands


README_COMMANDS = readme_evaluate_commands()


def test_readme_has_evaluate_commands():
    assert len(README_COMMANDS) >= 5 and any("gradcam.explain=label" in command for command in README_COMMANDS)


@pytest.fixture(scope="module")
def readme_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Small OOD sets in the documented .npz form (an ood.data_dir for speed), and a folder standing in for
    README's /data/my_images/."""
    ood_dir, images = tmp_path_factory.mktemp("ood_sets"), tmp_path_factory.mktemp("my_images")
    rng = np.random.default_rng(0)
    for name, shape in (("cifar100", (32, 32, 3)), ("mnist", (28, 28)), ("fashion_mnist", (28, 28))):
        np.savez_compressed(
            ood_dir / f"{name}_test.npz",
            images=rng.integers(0, 256, (200, *shape), dtype=np.uint8),
            labels=rng.integers(0, 10, 200),
        )
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / f"{index}.png")
    return ood_dir, images


def substitute(arg: str, run: Path, my_images: Path) -> str:
    """README's placeholders -> a real run directory (or its checkpoint) and image folder; the rest verbatim."""
    arg = arg.replace("logs/train/runs/<date>_<time>", str(run)).replace("<run>", str(run))
    arg = arg.replace("/data/my_images/", f"{my_images}/")
    if arg.endswith("=..."):
        arg = arg[: -len("...")] + str(run)
    assert "<" not in arg and "..." not in arg, f"README.md has a placeholder this test does not know: {arg!r}"
    return arg


def readme_run(command: list[str], run: Path, ood_dir: Path, my_images: Path, out: Path) -> tuple[list[str], str]:
    """Run README's command with its overrides as written (placeholders filled in), plus this machine's data
    folder, an output folder and, where OOD detection is on, small OOD sets and fewer fitting images; returns
    the overrides it ran with and, if it failed, why."""
    args = [substitute(arg, run, my_images) for arg in command[2:]]
    environment = [f"data.data_dir={DATA_DIR}", f"hydra.run.dir={out}", "progress=false"]
    if "ood=none" not in args:
        dropped = {arg.removeprefix("~ood.sets.") for arg in args if arg.startswith("~ood.sets.")}
        noise = [f"ood.sets.{name}.n=200" for name in ("gaussian_noise", "uniform_noise") if name not in dropped]
        environment += [f"ood.data_dir={ood_dir}", "ood.fit_images=500", *noise]
    result = run_entry_point("evaluate.py", *args, *environment, timeout=900)
    failure = "" if result.returncode == 0 else f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    return args, failure


@pytest.fixture(scope="module")
def readme_result(tiny_run, readme_inputs, tmp_path_factory):
    """Runs README's command number `index` (once) and returns its overrides, why it failed ("" if it did
    not), and its output folder."""
    root, done = tmp_path_factory.mktemp("readme"), {}

    def result(index: int) -> tuple[list[str], str, Path]:
        if index not in done:
            out = root / str(index)
            done[index] = (*readme_run(README_COMMANDS[index], tiny_run[0], *readme_inputs, out), out)
        return done[index]

    return result


def readme_params() -> list:
    """One case per README command, each run with the slow tests (about 40 s each on 2 cores); the default
    suite evaluates a real checkpoint through the CLI once (test_a_real_checkpoint_is_evaluated)."""
    return [
        pytest.param(index, id=" ".join(command[2:]), marks=pytest.mark.slow)  # each a full evaluate.py run (20-40 s)
        for index, command in enumerate(README_COMMANDS)
    ]


@pytest.mark.parametrize("index", readme_params())
def test_readme_evaluate_command(index, readme_result):
    """README's evaluate commands exit 0 and do what they say."""
    args, failure, out = readme_result(index)
    assert not failure, f"{shlex.join(README_COMMANDS[index])} failed: {failure}"
    summary = json.loads((out / "evaluation.json").read_text())
    assert (out / "report.html").is_file() and (out / "ood.json").is_file() == ("ood=none" not in args)
    settings = dict(arg.split("=", 1) for arg in args if "=" in arg)
    if "gradcam.explain" in settings:
        explained = {"label": "true label", "predicted": "predicted class"}[settings["gradcam.explain"]]
        assert summary["gradcam"] == {
            "layer": settings.get("gradcam.layer", "conv3"),
            "explain": settings["gradcam.explain"],
        }
        assert f"({explained}, layer" in (out / "report.html").read_text()
    if "+ood.sets.mine.path" in settings:
        assert json.loads((out / "ood.json").read_text())["sets"]["mine"]["n"] == 3
    if "tta" in settings:
        assert summary["tta"] == int(settings["tta"])
