"""The LightningModule: trains any image classifier with the configured optimizer, schedule and loss.

Nothing in a training step waits for the device; under DDP every epoch figure is the exact mean over all
ranks' images (the metric objects sum their states over ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cifar_lightning.augment import tta_logits
from cifar_lightning.models.folding import fold_batch_norms, pool_before_relu
from cifar_lightning.ood_training import attach_t2fnorm, rotation_head, rotpred_forward

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

#: Layers whose parameters norm_lr_scale applies to.
NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm)
#: Checkpoint entry holding the training metrics' running sums when it is saved inside an epoch.
UNFINISHED_EPOCH_KEY = "unfinished_epoch_metrics"


class ImageMean(Metric):
    """The mean of a per-image quantity (the loss) over an epoch from batch means and sizes: exact across ranks,
    with no device read per step (torchmetrics' MeanMetric checks for NaN)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch_mean: Tensor, batch_size: int) -> None:
        self.total += batch_mean.detach().float() * batch_size
        self.count += batch_size

    def compute(self) -> Tensor:
        return self.total / self.count


class ClassifierModule(L.LightningModule):
    """Training of `model` (normalized images to logits) with `loss` (cross-entropy when None), with per-epoch
    loss and accuracy for train/val/test; settings: cifar_lightning/config/train.py. optimizer: called with
    parameter groups; scheduler: with the optimizer and the fit's steps (schedules.py); run_config: stored in
    checkpoints so that they describe themselves; test_tta: used by all test figures but test_acc_plain;
    t2fnorm_tau and rotpred_weight: the training-time OOD methods of ood_training.py (None and 0: off).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        loss: nn.Module | None = None,
        num_classes: int = 10,
        channels_last: bool = True,
        compile: bool = False,
        test_tta: int = 0,
        norm_lr_scale: float = 1.0,
        weight_decay_scope: str = "weights",
        t2fnorm_tau: float | None = None,
        rotpred_weight: float = 0.0,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "loss"], logger=False)
        self.test_tta = test_tta
        model = attach_t2fnorm(model, t2fnorm_tau)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.rotpred_weight = float(rotpred_weight)
        self.rotation_head = rotation_head(model) if self.rotpred_weight > 0 else None
        if compile:
            self.model.compile()  # in place: parameter names (and checkpoints) stay as they are
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.channels_last = channels_last
        self.norm_lr_scale, self.weight_decay_scope = float(norm_lr_scale), weight_decay_scope
        self.criterion = loss if loss is not None else nn.CrossEntropyLoss()
        # validate_args=False: the checks read tensors back to the host, a device sync every step.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_plain = MulticlassAccuracy(num_classes, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.train_loss, self.val_loss, self.test_loss = ImageMean(), ImageMean(), ImageMean()
        #: rows = true class, columns = predicted; filled by each test run.
        self.test_confusion_matrix: list[list[int]] | None = None
        self._epoch_open = False  # inside a training epoch (between its first batch and its end)
        self._logged: set[str] = set()  # the metrics this epoch's results hold (see _record)
        self._unfinished_epoch: dict[str, dict[str, Tensor]] | None = None
        self._folded: tuple[nn.Module] | None = None  # in a tuple: not a submodule, not in state_dict

    def setup(self, stage: str) -> None:
        """At a fit's start, call the model's `init_from_data` (if any) with its first `init_images` training images."""
        init = getattr(self.model, "init_from_data", None)
        if stage != "fit" or init is None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "first_train_images"):
            raise RuntimeError(
                f"{type(self.model).__name__} initializes from the training data: fit it with "
                f"datamodule=CIFAR10DataModule(...), as train.py does"
            )
        init(datamodule.normalize(datamodule.first_train_images(self.model.init_images)))

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _record(self, stage: str, logits: Tensor, labels: Tensor) -> Tensor:
        """The stage's loss of these logits, added to its epoch loss and accuracy. The metric objects are updated
        every batch but logged at the epoch's first only: Lightning computes a logged metric object from all its
        updates at the epoch's end, and a metric's forward plus a self.log per step cost the report CNN's CPU step
        about 3%."""
        loss = self.criterion(logits, labels)
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        accuracy.update(logits, labels)
        mean_loss.update(loss, len(labels))
        self._log_once({f"{stage}_loss": mean_loss, f"{stage}_acc": accuracy})
        return loss

    def _log_once(self, metrics: dict[str, Metric]) -> None:
        """self.log each of these metric objects not yet logged this epoch (see _start_epoch)."""
        for name, metric in metrics.items():  # in order: every DDP process logs, and syncs, alike
            if name not in self._logged:
                self._logged.add(name)
                self.log(name, metric, on_step=False, on_epoch=True)

    def _start_epoch(self, stage: str) -> None:
        """A new epoch of the stage: its metrics are logged again at its first batch."""
        self._logged = {name for name in self._logged if not name.startswith(f"{stage}_")}

    # A checkpoint saved inside an epoch keeps the epoch's running training metrics.

    def on_train_epoch_start(self) -> None:
        self._start_epoch("train")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._epoch_open = True

    def on_train_epoch_end(self) -> None:
        self._epoch_open = False  # before the end-of-epoch checkpoint (written by a later hook)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._epoch_open:
            checkpoint[UNFINISHED_EPOCH_KEY] = {
                name: {key: value.detach().clone() for key, value in getattr(self, name).metric_state.items()}
                for name in ("train_loss", "train_acc")
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._unfinished_epoch = checkpoint.get(UNFINISHED_EPOCH_KEY)

    def on_train_start(self) -> None:
        """A fit resumed inside an epoch continues that epoch's loss and accuracy sums."""
        for name, state in (self._unfinished_epoch or {}).items():  # added to the fresh (zero) sums
            getattr(self, name).merge_state({key: value.to(self.device) for key, value in state.items()})
        self._unfinished_epoch = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.rotation_head is None:
            return self._record("train", self(batch[0]), batch[1])
        images, labels = batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, rotation_logits, rotations = rotpred_forward(self.model, self.rotation_head, images)
        rotation_loss = nn.functional.cross_entropy(rotation_logits, rotations)
        return self._record("train", logits[: len(labels)], labels) + self.rotpred_weight * rotation_loss

    def fold_for_inference(self) -> None:
        """At each validation and test run's start, after the callbacks' hooks (which may swap in the averaged
        weights): an eval copy of the model with its batch norms folded into their convolutions (models/folding.py),
        the same logits up to float rounding in less time, with each ReLU before a max pooling moved after it (exact;
        nothing hooks this copy). A compiled model runs as it is."""
        self._folded = None if self.hparams.compile else (pool_before_relu(fold_batch_norms(self.model)),)

    def inference_forward(self, images: Tensor) -> Tensor:
        """Logits of validation and test images: the folded copy's, or forward's outside a validation or test run."""
        if self._folded is None:
            return self(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._folded[0](images)

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("val")
        self.fold_for_inference()

    def on_validation_epoch_end(self) -> None:
        self._folded = None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if len(batch[1]) == 0:  # a short DDP shard's filler batch (see data.TensorBatchLoader)
            return
        self._record("val", self.inference_forward(batch[0]), batch[1])

    def on_test_epoch_start(self) -> None:
        self._start_epoch("test")
        self.test_confusion.reset()
        self.fold_for_inference()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if len(batch[1]) == 0:  # a short DDP shard's filler batch (see data.TensorBatchLoader)
            return
        images, labels = batch
        plain = self.inference_forward(images)
        logits = tta_logits(self.inference_forward, images, self.test_tta) if self.test_tta else plain
        self._record("test", logits, labels)
        self.test_acc_plain.update(plain, labels)
        self._log_once({"test_acc_plain": self.test_acc_plain})
        self.test_confusion.update(logits, labels)

    def on_test_epoch_end(self) -> None:
        self._folded = None
        # On every rank (compute() is a collective under DDP): the counts of all ranks' images.
        self.test_confusion_matrix = self.test_confusion.compute().tolist()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).softmax(dim=1)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Weights (ndim > 1) get the optimizer's weight decay, biases and norm parameters none; with
        norm_lr_scale != 1 or weight_decay_scope="all", norm parameters and biases get groups of their own."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.rotation_head is not None:
            params += list(self.rotation_head.parameters())
        if self.norm_lr_scale == 1.0 and self.weight_decay_scope == "weights":  # names label the LR monitor's curves
            return [
                {"params": [p for p in params if p.ndim > 1], "name": "weights"},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "name": "no_decay"},
            ]
        norm_ids = {id(p) for m in self.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
        groups = [
            {"params": [p for p in params if p.ndim > 1 and id(p) not in norm_ids], "name": "weights", "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in norm_ids], "name": "norm", "lr_scale": self.norm_lr_scale},
            {"params": [p for p in params if p.ndim <= 1 and id(p) not in norm_ids], "name": "biases", "lr_scale": 1.0},
        ]
        return [group for group in groups if group["params"]]

    def build_optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(self.parameter_groups())
        weight_decay = optimizer.defaults.get("weight_decay", 0.0)
        for group in optimizer.param_groups:
            if "lr_scale" not in group:
                continue
            group["lr"] *= group["lr_scale"]
            if group["name"] == "weights":
                continue
            # SGD shrinks by lr * weight_decay per step: scaled groups shrink like the weights (airbench), or not.
            group["weight_decay"] = weight_decay / group["lr_scale"] if self.weight_decay_scope == "all" else 0.0
        return optimizer

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The scheduler, built with the fit's step count (default: the trainer's estimate; None: no limit)."""
        if self.scheduler_factory is None:
            return None
        if not total_steps:
            steps = self.trainer.estimated_stepping_batches
            total_steps = None if steps == float("inf") else int(steps)
        return self.scheduler_factory(optimizer, total_steps=total_steps)

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        scheduler = self.build_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": scheduler.interval}}
