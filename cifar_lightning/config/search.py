"""The hyperparameter search's settings (hydra.sweeper.*, conf/hydra/sweeper/optuna.yaml extends them)."""

from typing import Any, Literal

from pydantic import Field, model_validator

from cifar_lightning.config.schema import Settings, preset

#: Validation metrics a study may optimize: the metrics.json figure of the checkpoint the run keeps (lowest
#: validation loss), and the direction that improves it. Never a test metric: the test set reports the
#: chosen configuration, it does not choose it.
OBJECTIVES = {"val_loss": ("best_val_loss", "minimize"), "val_acc": ("best_val_acc", "maximize")}


@preset("hydra/sweeper", "optuna_schema")
class SearchSettings(Settings):
    target = "hydra_plugins.cifar_lightning_optuna.optuna_sweeper.OptunaSweeper"
    objective: Literal[tuple(OBJECTIVES)] = Field(  # type: ignore[valid-type]
        "val_loss", description="the kept checkpoint's validation metric the study optimizes (never a test metric)"
    )
    direction: Literal["minimize", "maximize"] = Field(
        "minimize", description="minimize for val_loss, maximize for val_acc"
    )
    study_name: str = Field(
        "search", min_length=1, description="the study, by name, in its storage", json_schema_extra={"must": "a name"}
    )
    storage: str | None = Field(
        None,
        description="an RDB URL Optuna takes, no password inside (PGPASSWORD or ~/.pgpass); null: SQLite in the sweep "
        "directory",
    )
    n_trials: int = Field(20, ge=1, description="trials in the study in all, over every worker and re-run")
    n_jobs: int = Field(1, ge=1, description="trials launched at once per batch")
    sampler: Any = Field(None, description="an Optuna sampler (_target_ and its arguments); null: TPE")
    pruner: Any = Field(None, description="an Optuna pruner (_target_ and its arguments); null: never prune")
    params: dict[str, Any] = Field({}, description="the search space: <config key>: interval(...)|choice(...)|...")
    heartbeat_interval: int | None = Field(
        60, ge=1, description="seconds between a running trial's heartbeats (null: none, a killed trial stays running)"
    )
    max_retry: int = Field(1, ge=0, description="times a stale trial is run again with the same parameters")

    @model_validator(mode="after")
    def _improves(self) -> "SearchSettings":
        if OBJECTIVES[self.objective][1] != self.direction:
            raise ValueError(
                f"hydra.sweeper.direction={self.direction} with objective {self.objective}: {self.objective} improves "
                f"when you {OBJECTIVES[self.objective][1]} it, so the study would look for the worst trials"
            )
        return self
