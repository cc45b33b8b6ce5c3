"""export.py as a user runs it: a run directory gives model.pt2 and export.json under logs/export/runs/ with the
parity figures printed; a failed parity check exits 1; a missing checkpoint stops with one `error:` line and exit
status 2 (a tampered checkpoint and an unknown format raise the errors behind that line, checked in this process:
each further subprocess costs seconds of imports). And benchmarks/inference_throughput.py, shortened."""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from cifar_lightning.checkpoints import CheckpointError
from cifar_lightning.errors import ConfigError
from cifar_lightning.exporting import export
from tests.helpers import ROOT, assert_refused, only_run_dir, run_entry_point
from tests.test_exporting import compose_export


def run_export(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    """export.py writing under log_dir."""
    return run_entry_point("export.py", f"paths.log_dir={log_dir}", *overrides)


def test_a_run_directory_is_exported_and_verified(tiny_run, data_dir, tmp_path):
    run, _ = tiny_run
    result = run_export(f"run_dir={run}", "format=pt2", f"data.data_dir={data_dir}", log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.stderr
    out = only_run_dir(tmp_path / "logs", job="export")
    assert sorted(p.name for p in out.iterdir() if p.name != ".hydra") == ["export.json", "export.log", "model.pt2"]
    summary = json.loads((out / "export.json").read_text())
    assert summary["checkpoint"] == str(run / "checkpoints" / "best.ckpt") and summary["format"] == "pt2"
    assert summary["parity"]["images"] == 1000 and summary["parity"]["passed"]
    printed = re.search(
        r"parity on 1000 CIFAR-10 test images through torch.export.load: "
        r"max \|logit difference\| (\S+), top-1 agreement (\S+)%",
        result.stdout,
    )
    assert printed, result.stdout
    assert float(printed[1]) == float(f"{summary['parity']['max_abs_diff']:.3g}") <= 1e-3
    assert (
        float(printed[2]) == pytest.approx(100 * summary["parity"]["agreement"], abs=0.005)
        and summary["parity"]["agreement"] >= 0.999
    )


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_a_failed_parity_check_exits_1(tiny_run, data_dir, tmp_path):
    """No tolerance at all: onnxruntime's float32 kernels differ from PyTorch's in the last bits."""
    ckpt = tiny_run[0] / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt={ckpt}", f"data.data_dir={data_dir}", "check.images=200", "check.max_abs_diff=0"]
    result = run_export(*overrides, log_dir=tmp_path / "logs")
    out = only_run_dir(tmp_path / "logs", job="export")
    expected = f"the exported {out / 'model.onnx'} does not reproduce the PyTorch model on 200 CIFAR-10 test images"
    assert_refused(result, f"{expected}: max |logit difference|", "> check.max_abs_diff 0.", status=1)
    summary = json.loads((out / "export.json").read_text())
    assert summary["parity"]["passed"] is False and summary["parity"]["max_abs_diff"] > 0
    assert "parity on 200 CIFAR-10 test images through onnxruntime (CPUExecutionProvider)" in result.stdout
    assert "onnxscript" not in result.stdout  # the exporter's own INFO chatter stays out


def test_a_missing_checkpoint_exits_2(tmp_path):
    missing = tmp_path / "no.ckpt"
    assert_refused(run_export(f"ckpt={missing}", log_dir=tmp_path / "logs"), str(missing), "does not exist")


def test_a_tampered_checkpoint_and_an_unknown_format_are_refused(tiny_run, data_dir, tmp_path):
    """The same `error:` path as a missing checkpoint (exit status 2), run in this process: no output is written."""
    checkpoint = torch.load(tiny_run[0] / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["run_config"]["model"]["_target_"] = "os.system"
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"names a model that is not allowed: `_target_: 'os.system'`"):
        export(compose_export([f"ckpt={tampered}", f"data.data_dir={data_dir}"], out))
    with pytest.raises(ConfigError, match="invalid `format` config: format must be one of onnx, pt2, got 'tflite'"):
        export(compose_export([f"ckpt={tiny_run[0] / 'checkpoints' / 'best.ckpt'}", "format=tflite"], out))
    assert CheckpointError.exit_code == ConfigError.exit_code == 2 and not out.exists()


def test_the_inference_benchmark_prints_both_sides(capsys):
    spec = importlib.util.spec_from_file_location("inference_throughput", ROOT / "benchmarks/inference_throughput.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.main(["--model", "report_cnn", "--batch-sizes", "1", "3", "--warmup", "1", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "model: report_cnn (fresh, conf/model/report_cnn.yaml), 0.12 M parameters" in out
    figure = r"(\d+\.\d+) ms/batch +(\d+) images/s"
    rows = re.findall(
        rf"batch +(\d+) \| PyTorch eager: +{figure} \| onnxruntime: +{figure} \| onnxruntime/eager speed "
        r"(\d+\.\d+)",
        out,
    )
    assert [row[0] for row in rows] == ["1", "3"], out
    for batch, eager_ms, eager_rate, ort_ms, ort_rate, speed in rows:
        assert float(eager_ms) > 0 and float(ort_ms) > 0 and float(speed) > 0
        assert abs(int(batch) * 1000 / float(eager_ms) - int(eager_rate)) <= 1 + 0.01 * int(eager_rate)
