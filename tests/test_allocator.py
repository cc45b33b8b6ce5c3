"""keep_heap: large CPU tensors come from glibc's heap, not a fresh mmap each; train, evaluate and predict apply it."""

import subprocess
import sys

import pytest

from cifar_lightning import evaluation, prediction, training
from cifar_lightning.allocator import glibc
from tests.conftest import compose_evaluate, compose_train
from tests.test_prediction import compose_predict

needs_glibc = pytest.mark.skipif(glibc() is None, reason="mallopt's parameters are glibc's")

# In a fresh process (mallopt acts on the whole process): the bytes glibc holds in mmapped blocks while a 64 MiB
# tensor lives, beyond those held before it, read with mallinfo2 (glibc >= 2.33).
MMAPPED_BYTES = """
import ctypes, sys
import torch
from cifar_lightning.allocator import glibc, keep_heap

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = glibc()
libc.mallinfo2.restype = MallInfo2
print(keep_heap(sys.argv[1] == "on"))
before = libc.mallinfo2().hblkhd
activation = torch.empty(64 << 20, dtype=torch.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


def mmapped_bytes(setting: str) -> tuple[bool, int]:
    result = subprocess.run([sys.executable, "-c", MMAPPED_BYTES, setting], capture_output=True, text=True, check=True)
    applied, held = result.stdout.split()
    return applied == "True", int(held)


@needs_glibc
def test_keep_heap_serves_large_tensors_from_the_heap():
    assert mmapped_bytes("off") == (False, pytest.approx(64 << 20, rel=0.01))  # glibc's default: an mmap of its own
    applied, held = mmapped_bytes("on")
    assert applied and held == 0


class Applied(Exception):
    """Raised by the stand-in keep_heap: the entry reached it, with this setting."""


@pytest.mark.parametrize("setting", [None, "false"])
def test_each_entry_applies_its_keep_heap_setting(setting, monkeypatch, tmp_path):
    def record(enabled: bool) -> bool:
        raise Applied(enabled)

    overrides = [] if setting is None else [f"keep_heap={setting}"]
    entries = {
        training: lambda: training.build(compose_train(overrides, tmp_path / "train")),
        evaluation: lambda: evaluation.run_evaluation(compose_evaluate(["ckpt=x", *overrides], tmp_path / "eval")),
        prediction: lambda: prediction.run_prediction(compose_predict(["ckpt=x", "inputs=x", *overrides], tmp_path)),
    }
    for module, run in entries.items():
        monkeypatch.setattr(module, "keep_heap", record)
        with pytest.raises(Applied) as applied:
            run()
        assert applied.value.args == (setting is None,), module.__name__
