"""train.py's settings: its own keys and the nodes that build the training objects (conf/<group>/<name>.yaml
extends them); and `built`, which instantiates a node, what only the object can refuse as a ConfigError."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field, model_validator

from cifar_lightning.config.schema import NODE_SCHEMAS, SCHEMAS, Settings, defaults, preset
from cifar_lightning.config.types import KeepHeap
from cifar_lightning.errors import CifarLightningError, ConfigError, one_line

LabelSmoothing = Annotated[float, Field(ge=0, lt=1, description="share of each target spread evenly over all classes")]
Gamma = Annotated[float, Field(gt=0, description="the factor the rate is multiplied by")]


class TrainSettings(Settings):
    """train.yaml's own scalars (the `hpo` and `ablation` nodes have schemas of their own)."""

    seed: int = Field(0, description="seeds Python, NumPy and torch, the batch order and the augmentation")
    resume: str | None = Field(None, description="a run directory to continue from its checkpoints/last.ckpt")
    experiment_name: str | None = Field(None, description="the recipe (set by experiment=...), kept in metrics.json")
    keep_heap: KeepHeap = True


class HpoSettings(Settings):
    """Set by the hyperparameter-search sweeper on each trial (cifar_lightning/hpo/trial.py); null for a run alone."""

    study: str | None = Field(None, description="the Optuna study this run is a trial of")
    storage: str | None = Field(None, description="the study's storage URL")
    trial: int | None = Field(None, ge=0, description="the trial number this run is")

    @model_validator(mode="after")
    def trial_needs_its_study(self) -> "HpoSettings":
        if self.trial is not None and (self.study is None or self.storage is None):
            raise ValueError(
                f"hpo.trial={self.trial} needs hpo.study and hpo.storage: the hyperparameter-search sweeper sets all "
                f"three for its trials. Fix: run the search (python train.py -m hparams_search=<name>), or drop hpo.* "
                f"to train a configuration alone"
            )
        return self


class AblationSettings(Settings):
    """Set by +ablation=<name> (conf/ablation/): the run's row in the report's Table 1."""

    name: str | None = Field(None, description="the Table 1 row this run is")
    seeds: int = Field(3, ge=1, description="seeds per configuration in +ablation=all (seeds 0 .. seeds-1)")


# train.yaml extends this node (`defaults: [train_schema, ...]`); hpo and ablation are checked by their key.
ConfigStore.instance().store(
    name="train_schema",
    node={**defaults(TrainSettings), "hpo": defaults(HpoSettings), "ablation": defaults(AblationSettings)},
)
NODE_SCHEMAS.update(hpo=HpoSettings, ablation=AblationSettings)


@preset("module", "classifier_schema")
class ClassifierSettings(Settings):
    """ClassifierModule's own arguments; its model, optimizer, scheduler and loss come from their groups."""

    target = "cifar_lightning.module.ClassifierModule"
    channels_last: bool = Field(True, description="run the model in channels-last memory format (faster convolutions)")
    compile: bool = Field(False, description="torch.compile the model (faster GPU steps after a slow first)")
    test_tta: Literal[0, 1, 2] = Field(0, description="test-time augmentation of test_acc (augment.tta_logits)")
    norm_lr_scale: float = Field(1.0, gt=0, description="learning-rate multiplier of batch-norm parameters")
    weight_decay_scope: Literal["weights", "all"] = Field("weights", description="decay conv/linear weights or all")
    t2fnorm_tau: float | None = Field(
        None,
        gt=0,
        description="T2FNorm (ood_training.py): head trains on features of norm 1/tau; 0.1: paper; null: off",
    )
    rotpred_weight: float = Field(
        0.0, ge=0, description="RotPred (ood_training.py): weight of the rotation loss, 4x images per step; 1: OpenOOD"
    )


@preset("loss", "cross_entropy_schema")
class CrossEntropySettings(Settings):
    target = "torch.nn.CrossEntropyLoss"
    label_smoothing: LabelSmoothing = 0.0


@preset("loss", "logitnorm_schema")
class LogitNormSettings(Settings):
    target = "cifar_lightning.losses.logitnorm"
    temperature: float = Field(0.04, gt=0, description="LogitNorm's tau: the logits are scaled to norm 1/tau")
    label_smoothing: LabelSmoothing = 0.0


@preset("optim", "sgd_schema")
class SGDSettings(Settings):
    target = "torch.optim.SGD"
    lr: float = Field(0.001, ge=0, description="the learning rate")
    momentum: float = Field(0.9, ge=0, description="momentum factor")
    dampening: float = Field(0.0, ge=0, lt=1, description="each gradient enters the momentum as (1 - dampening) x")
    nesterov: bool = Field(False, description="Nesterov momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 factor (on conv/linear weights unless module says all)")

    @model_validator(mode="after")
    def nesterov_needs_momentum(self) -> "SGDSettings":
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov=true needs momentum > 0. Fix: optim.momentum=0.9, or optim.nesterov=false")
        return self


@preset("scheduler", "step_schema")
class StepSettings(Settings):
    target = "cifar_lightning.schedules.StepLR"
    step_size: int = Field(16, ge=1, description="epochs between multiplications by gamma")
    gamma: Gamma = 0.1


@preset("scheduler", "multistep_schema")
class MultiStepSettings(Settings):
    target = "cifar_lightning.schedules.MultiStepLR"
    milestones: list[int] = Field([16], description="epochs at which the rate is multiplied by gamma")
    gamma: Gamma = 0.1


@preset("scheduler", "warmup_schema")
class WarmupSettings(Settings):
    target = "cifar_lightning.schedules.WarmupSchedule"
    shape: Literal["linear", "cosine", "one_cycle"] = Field("linear", description="the curves up and down")
    warmup: float = Field(0.0, ge=0, lt=1, description="share of all steps spent warming up")
    start_factor: float = Field(1.0, ge=0, le=1, description="multiplier of the rate at the first step")
    end_factor: float = Field(0.0, ge=0, description="multiplier the rate decays to at the end")


@preset("averaging", "averaging_schema")
class AveragingSettings(Settings):
    target = "cifar_lightning.averaging.AveragedWeights"
    mode: Literal["ema", "lookahead"] = Field("ema", description="ema: keep the average; lookahead: also reset to it")
    decay: float = Field(0.999, gt=0, lt=1, description="the average's share kept at each update")
    every_n_steps: int = Field(1, ge=1, description="optimizer steps between updates")
    ramp_power: float = Field(0.0, ge=0, description="> 0: decay x (step / total steps)^ramp_power")


class RunCheckpointSettings(Settings):
    """callbacks.model_checkpoint (cifar_lightning.callbacks.RunCheckpoint, Lightning's ModelCheckpoint)."""

    target = "cifar_lightning.callbacks.RunCheckpoint"
    dirpath: str | None = Field(None, description="<run dir>/checkpoints (cifar_lightning/runs/__init__.py)")
    filename: str | None = Field(None, description="the best checkpoint's name")
    monitor: str | None = Field(None, description="the metric that picks the best checkpoint")
    mode: Literal["min", "max"] = Field("min", description="whether the best value is the lowest or the highest")
    save_top_k: int = Field(1, ge=-1, description="best checkpoints kept (0: none, -1: all)")
    save_last: bool = Field(True, description="also keep the latest state as last.ckpt")
    every_n_train_steps: int = Field(0, ge=0, description="also write last.ckpt every this many steps (0: off)")
    auto_insert_metric_name: bool = Field(True, description="put the metric's name in the file name")
    enable_version_counter: bool = Field(True, description="add -v1, -v2 ... instead of overwriting")
    verbose: bool = Field(False, description="log every save")
    save_weights_only: bool = Field(False, description="weights only (a run cannot resume from them)")
    every_n_epochs: int | None = Field(None, ge=0, description="epochs between best-checkpoint checks")
    save_on_train_epoch_end: bool | None = Field(None, description="check at the training epoch's end")


class FreezeParametersSettings(Settings):
    target = "cifar_lightning.callbacks.FreezeParameters"
    names: list[str] = Field([], description="parameter names in the model (model.named_parameters())")
    after_epochs: int = Field(0, ge=0, description="epochs trained before the freeze")


# Nodes inside the callbacks group: checked by their target, no preset of their own.
SCHEMAS.update({schema.target: schema for schema in (RunCheckpointSettings, FreezeParametersSettings)})


@contextmanager
def config_errors(group: str) -> Iterator[None]:
    """An error raised while building `group` (one the schemas cannot see) as a one-paragraph ConfigError."""
    try:
        yield
    except CifarLightningError:
        raise
    except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, ImportError) as exc:
        cause: BaseException = exc
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise ConfigError(
            f"invalid `{group}` config: {one_line(cause)}. Fix the value on the command line "
            f"(python train.py {group}.<key>=<value>) or in conf/{group}/; nothing was trained."
        ) from exc


def built(cfg: DictConfig, key: str, **objects: Any) -> Any:
    """The node at `key` instantiated (None for an empty one, e.g. scheduler=none), its errors as ConfigErrors."""
    with config_errors(key):
        return instantiate(node, **objects) if (node := OmegaConf.select(cfg, key)) else None


def instantiate_entries(cfg: DictConfig, group: str) -> dict[str, Any]:
    """Every entry of a group of named objects (callbacks, loggers), by name; null entries are skipped."""
    return {name: built(cfg, f"{group}.{name}") for name, entry in (cfg.get(group) or {}).items() if entry}
