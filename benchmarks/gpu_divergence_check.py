"""DivergenceGuard's automatic mode on a real GPU: the loss is kept on the device and read every
`check_every_n_steps` steps (no host sync per step), yet the run still names the first bad step and never
checkpoints non-finite weights. On the CPU the same run stops at the bad step itself (the control).

    python benchmarks/gpu_divergence_check.py        # needs a CUDA GPU for the GPU half; prints one line per case

It imports only torch, lightning and cifar_lightning's callbacks (not the package's Hydra/OmegaConf set-up), so
that it runs on a GPU machine that lacks the project's other dependencies.
"""

import sys
import tempfile
import types
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
package = types.ModuleType("cifar_lightning")  # the package without its __init__ (OmegaConf resolvers)
package.__path__ = [str(ROOT / "cifar_lightning")]
sys.modules.setdefault("cifar_lightning", package)

from cifar_lightning.callbacks import DivergenceGuard  # noqa: E402
from cifar_lightning.errors import TrainingDiverged  # noqa: E402

BAD_STEP = 17  # the optimizer step whose loss is NaN


class Poisoned(L.LightningModule):
    """A linear classifier whose loss turns NaN at BAD_STEP (and its weights with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 10)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(self.layer(images), labels)
        return loss * float("nan") if self.global_step + 1 == BAD_STEP else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(accelerator: str, every_n_train_steps: int) -> tuple[int, int, list[tuple[str, int, bool]]]:
    """(step the error names, step the run stopped at, [(checkpoint, its step, all finite)])."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64 * 40, 32), torch.randint(0, 10, (64 * 40,)))
    folder = Path(tempfile.mkdtemp())
    saver = ModelCheckpoint(dirpath=folder, every_n_train_steps=every_n_train_steps, save_top_k=-1)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DivergenceGuard(), saver],
    )
    try:
        trainer.fit(Poisoned(), DataLoader(data, batch_size=64))
        named = -1
    except TrainingDiverged as error:
        named = error.step
    kept = []
    for path in sorted(folder.glob("*.ckpt")):
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        finite = all(bool(torch.isfinite(v).all()) for v in checkpoint["state_dict"].values())
        kept.append((path.name, checkpoint["global_step"], finite))
    return named, trainer.global_step, kept


def main() -> int:
    cases = [("cpu", 10, BAD_STEP), ("cpu", 13, BAD_STEP)]
    if torch.cuda.is_available():
        cases += [("gpu", 10, 20), ("gpu", 13, 25)]  # the check before the step-20 save; the 25-step read
        print(f"device: {torch.cuda.get_device_name()}")
    else:
        print("no CUDA GPU: the CPU control only")
    failures = 0
    for accelerator, every, expected_stop in cases:
        named, stopped, kept = run(accelerator, every)
        ok = named == BAD_STEP and stopped == expected_stop and kept and all(finite for *_, finite in kept)
        failures += not ok
        print(
            f"{accelerator} checkpoint every {every} steps: error names step {named}, stopped at step {stopped} "
            f"(expected {expected_stop}), checkpoints {kept}: {'ok' if ok else 'FAILED'}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
