"""`python -m cifar_lightning.ablation` in-process: one sweep or several into --out, its one-line errors
(exit status 2), and the Hydra callback that aggregates when a multirun ends."""

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_lightning.ablation import AggregateAblation
from cifar_lightning.ablation.__main__ import main
from tests.ablation.jobs import PNG_MAGIC, write_job, write_seed_sweep


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], captured.err
    return lines[0]


def test_cli_prints_the_table(tmp_path, capsys):
    write_job(tmp_path, 0, "improved", 0, 0.67)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Improved | 67.00 ± n/a | 66.60 |" in out
    assert f"into {tmp_path}" in out and (tmp_path / "ablation.md").is_file()


def test_cli_combines_several_sweeps_into_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sweeps are named relative to it: no absolute path in a table copied to docs
    sweeps = [str(write_seed_sweep(tmp_path / f"seed{seed}", seed, ["base", "improved"])) for seed in range(3)]
    out = tmp_path / "table"
    assert main([*sweeps, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Base | 61.00 ± 1.00 | 60.92 | -5.50 |" in printed and "| 3/3 |" in printed
    assert "3 sweeps: seed0, seed1, seed2" in printed
    assert sorted(path.name for path in out.iterdir()) == ["ablation.csv", "ablation.md", "confusion.png", "curves.png"]
    assert not any((Path(sweep) / "ablation.md").exists() for sweep in sweeps)  # the sweeps stay as they were


def test_several_sweeps_without_out_are_refused(tmp_path, capsys):
    first, second = write_seed_sweep(tmp_path / "a", 0, ["base"]), write_seed_sweep(tmp_path / "b", 1, ["base"])
    assert main([str(first), str(second)]) == 2
    line = one_error_line(capsys)
    assert "2 sweep directories given" in line and "--out DIR" in line
    assert not (first / "ablation.md").exists() and not (second / "ablation.md").exists()


def test_a_seed_in_two_sweeps_is_refused_naming_both_jobs(tmp_path, capsys):
    first, second = write_seed_sweep(tmp_path / "a", 0, ["base"]), write_seed_sweep(tmp_path / "b", 0, ["base"])
    out = tmp_path / "table"
    assert main([str(first), str(second), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "'base' with seed 0 has a result in two jobs" in line
    assert str(first / "0") in line and str(second / "0") in line
    assert not out.exists()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_refuses_a_folder_without_jobs_with_one_line(tmp_path, capsys, make):
    sweep = tmp_path / "sweep"
    if make == "empty":
        (sweep / "not-a-job").mkdir(parents=True)
    assert main([str(sweep)]) == 2
    assert str(sweep) in one_error_line(capsys)


def test_callback_aggregates_at_the_end_of_a_multirun(tmp_path, caplog):
    write_job(tmp_path, 0, "base", 0, 0.61)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with caplog.at_level(logging.INFO, logger="cifar_lightning.ablation"):
        AggregateAblation().on_multirun_end(config)
    assert "| Base | 61.00 ± n/a |" in (tmp_path / "ablation.md").read_text()
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert str(tmp_path / "ablation.md") in caplog.text


def test_callback_logs_instead_of_raising(tmp_path, caplog):
    missing = tmp_path / "gone"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(missing)}}})
    with caplog.at_level(logging.ERROR, logger="cifar_lightning.ablation"):
        AggregateAblation().on_multirun_end(config)
    assert "ablation summary not written" in caplog.text and str(missing) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cifar_lightning.ablation"):
        AggregateAblation().on_multirun_end(OmegaConf.create({}))  # no hydra.sweep.dir at all
    assert "ablation summary failed" in caplog.text
