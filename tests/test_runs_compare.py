"""The runs leaderboard (cifar_lightning/runs/compare.py, python -m cifar_lightning.runs compare) on real run
directories: two tiny trainings that differ in optim.lr and model.dropout, in a sweep-like folder with copies of
them marked as an Optuna-pruned trial and a diverged run (status rewritten with runs.write_metrics), a killed run
(config.yaml only) and one whose metrics.json is broken; and two runs of different recipes (report_improved,
fast94_cpu) composed from the real configs with their own overrides, for the printed table's width and columns."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_lightning.runs import DIVERGED, PRUNED, RunDir, read_metrics, write_metrics
from cifar_lightning.runs.__main__ import main
from cifar_lightning.runs.compare import (
    HEADINGS,
    METRIC_COLUMNS,
    UNFINISHED,
    UNREADABLE,
    CompareError,
    compare,
    find_run_dirs,
    render_markdown,
    render_table,
    write_comparison,
)
from cifar_lightning.tables import markdown_table, write_csv
from cifar_lightning.training import train
from tests.conftest import QUIET, compose_train

# One epoch of two batches: a real run directory in about 3 s.
TINY = [
    "experiment=report_base",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
]
# The trained runs' only differences: (name, optim.lr, model.dropout).
RUNS = [("lr_low", 0.001, 0.0), ("lr_high", 0.05, 0.3)]
STATUS = {
    "lr_low": "completed",
    "lr_high": "completed",
    "pruned": PRUNED,
    "diverged": DIVERGED,
    "nested/killed": UNFINISHED,
    "broken": UNREADABLE,
}


def copy_run(source: RunDir, target: RunDir, **changes) -> None:
    """A copy of a run whose metrics.json has these changes (a real metrics.json, rewritten by its owner)."""
    shutil.copytree(source.root, target.root)
    write_metrics(target, {**read_metrics(source), **changes})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir) -> Path:
    """A sweep-like folder: two trained runs, a pruned trial, a diverged run, a killed run (nested one level
    deeper, like a study's trials) and one with a broken metrics.json."""
    root = tmp_path_factory.mktemp("compare") / "sweep"
    for name, lr, dropout in RUNS:
        overrides = [f"data.data_dir={data_dir}", *QUIET, *TINY, f"optim.lr={lr}", f"model.dropout={dropout}"]
        train(compose_train(overrides, root / name))
    low, high = RunDir(root / "lr_low"), RunDir(root / "lr_high")
    copy_run(high, RunDir(root / "pruned"), status=PRUNED, test_acc=None, test_loss=None)
    copy_run(low, RunDir(root / "diverged"), status=DIVERGED, test_acc=None, best_val_loss=float("nan"))
    killed = RunDir(root / "nested" / "killed")
    killed.root.mkdir(parents=True)
    shutil.copy(low.config, killed.config)
    broken = RunDir(root / "broken")
    shutil.copytree(low.root, broken.root)
    broken.metrics.write_text("{not json")
    return root


def test_only_the_changed_keys_are_columns(sweep, monkeypatch):
    monkeypatch.chdir(sweep)
    comparison = compare([str(sweep)])
    # paths.output_dir, the checkpoint dirpath, TensorBoard's save_dir... differ too, but lie inside each run.
    assert comparison.keys == ["model.dropout", "optim.lr"]
    assert {row.name: row.status for row in comparison.rows} == STATUS
    broken = next(row for row in comparison.rows if row.name == "broken")
    assert "cannot be read" in broken.notes[0] and broken.metrics == {}


def test_rows_are_sorted_by_the_chosen_metric(sweep, monkeypatch):
    monkeypatch.chdir(sweep)

    def order(**kwargs):
        rows = compare([str(sweep)], **kwargs).rows
        return [row.name for row in rows], [row.metrics.get(kwargs.get("sort", "best_val_acc")) for row in rows]

    names, values = order()  # best_val_acc, highest first
    assert values[:4] == sorted(values[:4], reverse=True) and names[4:] == ["broken", "nested/killed"]
    assert names.index("lr_high") < names.index("pruned")  # equal values: path order
    names, values = order(sort="best_val_loss")  # lowest first; the diverged run's NaN counts as missing
    assert values[:3] == sorted(values[:3]) and names[3:] == ["broken", "diverged", "nested/killed"]
    names, values = order(sort="best_val_loss", descending=True)
    assert values[:3] == sorted(values[:3], reverse=True) and names[3:] == ["broken", "diverged", "nested/killed"]


def test_csv_and_markdown_files(sweep, monkeypatch, tmp_path):
    monkeypatch.chdir(sweep)
    comparison = compare(["lr_*", "nested", "diverged"], sort="test_acc")
    markdown, csv_path = write_comparison(comparison, tmp_path / "out")
    with csv_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["run", "recipe", "status", *METRIC_COLUMNS, "model.dropout", "optim.lr"]
    by_name = {row["run"]: row for row in rows}
    assert list(by_name) == [row.name for row in comparison.rows] and len(rows) == 4
    low = json.loads(RunDir(sweep / "lr_low").metrics.read_text())
    assert float(by_name["lr_low"]["test_acc"]) == low["test_acc"]  # the raw fraction, full precision
    assert by_name["lr_low"]["recipe"] == "report_base" and by_name["nested/killed"]["recipe"] == "report_base"
    assert by_name["lr_low"]["optim.lr"] == "0.001" and by_name["lr_high"]["model.dropout"] == "0.3"
    assert by_name["nested/killed"]["status"] == UNFINISHED and by_name["nested/killed"]["test_acc"] == ""
    assert by_name["diverged"]["best_val_loss"] == "nan"

    text = markdown.read_text()
    assert "4 runs from `lr_*`, `nested`, `diverged`, sorted by test_acc (descending" in text
    low_figures = f"{low['best_val_loss']:.4f} | {100 * low['best_val_acc']:.2f} | {100 * low['test_acc']:.2f}"
    assert f"| lr_low | report_base | completed | {low_figures} | {low['best_epoch']} | {low['epochs_run']} | " in text
    assert text.count(" | 0.0 | 0.001 |") == 3  # the config keys after the figures (diverged, killed, lr_low)
    assert "| diverged | report_base | diverged | nan |" in text
    assert "test_acc% is test_acc" in text and "choose a configuration on validation" in text
    assert text == render_markdown(comparison)


def test_the_command_line(sweep, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "board"
    assert main(["compare", str(sweep / "lr_high"), str(sweep / "lr_low" / "metrics.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    caption, header = printed.splitlines()[:2]
    # Not below the current directory: the runs' folder is absolute, the runs are named from it.
    assert caption == f"2 runs in {sweep}, by best_val_acc (highest first, missing last):"
    assert header == "| run | recipe | status | " + " | ".join(HEADINGS.values()) + " | model.dropout | optim.lr |"
    assert f"Wrote {out / 'compare.md'} and {out / 'compare.csv'}" in printed and (out / "compare.csv").is_file()
    assert "| lr_high | report_base | completed |" in printed

    assert main(["compare", str(sweep / "*"), "--sort", "train_seconds", "--descending", "--out", str(out)]) == 0
    seconds = [row["train_seconds"] for row in csv.DictReader((out / "compare.csv").open())]
    assert len(seconds) == 6 and seconds[4:] == ["", ""]
    assert [float(value) for value in seconds[:4]] == sorted(map(float, seconds[:4]), reverse=True)


def test_a_path_without_runs_is_refused(sweep, tmp_path, capsys):
    (tmp_path / "empty" / ".hydra").mkdir(parents=True)
    (tmp_path / "empty" / ".hydra" / "config.yaml").write_text("seed: 0\n")  # Hydra's copy is no run
    hydra_copy = tmp_path / "empty" / ".hydra" / "*.yaml"
    for path, problem in [
        (tmp_path / "empty", "holds no run directory"),
        (hydra_copy, "holds no run directory"),
        (tmp_path / "missing*", "matches nothing"),
    ]:
        assert main(["compare", str(sweep / "lr_low"), str(path), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {path} {problem}") and "A run directory is a folder" in error
        assert error.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(CompareError, match="cannot sort by 'val_acc'"):
        compare([str(sweep)], sort="val_acc")


def test_one_run_listed_twice_is_one_row(sweep):
    runs = find_run_dirs([str(sweep / "lr_low"), str(sweep / "lr_low" / "config.yaml"), str(sweep / "**/lr_low")])
    assert runs == [RunDir(sweep / "lr_low")]


def test_the_table_renderer(tmp_path):
    table = markdown_table(["name", "acc"], [["a|b", 1.5], ["line\nbreak", None]])
    assert table == "| name | acc |\n|---|---:|\n| a\\|b | 1.5 |\n| line break |  |\n"
    path = write_csv(tmp_path / "sub" / "t.csv", ["name", "acc"], [["a|b", 0.123456789], ["c", None]])
    assert path.read_bytes() == b"name,acc\r\na|b,0.123456789\r\nc,\r\n"
    with pytest.raises(ValueError, match="2 cells, the header 3"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def fake_run(run: RunDir, overrides: list[str], **figures) -> None:
    """A run directory as `python train.py <overrides>` leaves it, without the training: the composed config.yaml,
    Hydra's .hydra/overrides.yaml and a metrics.json written by runs.write_metrics."""
    cfg = compose_train(overrides, run.root)
    run.hydra.mkdir(parents=True)
    run.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    OmegaConf.save(OmegaConf.create(overrides), run.hydra / "overrides.yaml")
    write_metrics(run, {"status": "completed", "experiment": cfg.experiment_name, "best_epoch": 9, **figures})


def test_two_recipes_fit_a_terminal(tmp_path, monkeypatch, capsys):
    """report_improved against fast94_cpu: ~60 keys differ, only the overrides that differ are printed, after the
    metrics, shortened to 120 columns; compare.csv keeps every differing key and full values."""
    monkeypatch.chdir(tmp_path)
    runs = Path("logs/train/runs")
    long_data_dir = str(tmp_path / "a" / "much" / "longer" / "copy" / "of" / "the" / "cifar10" / "data")
    fake_run(
        RunDir(runs / "2026-12-06_10-00-00"),
        ["experiment=report_improved", "optim.lr=0.02", "trainer.max_epochs=30", "data.data_dir=data"],
        best_val_loss=0.61,
        best_val_acc=0.8123,
        test_acc=0.8061,
        epochs_run=30,
        train_seconds=1834.5,
    )
    fake_run(
        RunDir(runs / "2026-12-06_11-00-00"),
        ["experiment=fast94_cpu", "optim.lr=0.3", "trainer.max_epochs=30", f"data.data_dir={long_data_dir}"],
        best_val_loss=0.25,
        best_val_acc=0.9302,
        test_acc=0.9311,
        epochs_run=30,
        train_seconds=912.0,
    )
    assert main(["compare", str(runs)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert all(len(line) <= 120 for line in lines), max(lines, key=len)
    assert lines[0] == "2 runs in logs/train/runs, by best_val_acc (highest first, missing last):"
    header = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert header[:9] == ["run", "recipe", "status", *HEADINGS.values()]
    assert header[9:] == ["data.data_dir", "optim.lr"]  # set by both runs' overrides and different
    assert lines[3].startswith("| 2026-12-06_11-00-00 | fast94_cpu | completed | 0.2500 | 93.02 | 93.11 | 9 | 30 |")
    assert "| 2026-12-06_10-00-00 | report_improved | completed |" in lines[4]
    assert long_data_dir not in printed and "…" in lines[3]  # shortened in print, whole in compare.csv

    with Path("logs/compare/compare.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    recipe_only = ["model.widths", "scheduler._target_", "data.batch_size", "module.test_tta"]
    for key in recipe_only:
        assert key in rows[0] and f" {key} " not in printed  # a recipe switch changes it: compare.csv only
    assert rows[0]["data.data_dir"] == long_data_dir and rows[0]["run"] == str(runs / "2026-12-06_11-00-00")
    assert "trainer.max_epochs" not in rows[0] and "experiment_name" not in rows[0]  # equal; the recipe column
    unshown = len(rows[0]) - 3 - len(METRIC_COLUMNS) - 2
    assert f"{unshown} more config keys differ only through the recipe or defaults" in printed
    markdown = Path("logs/compare/compare.md").read_text()
    assert render_table(compare([str(runs)])) in markdown and lines[1] in markdown
