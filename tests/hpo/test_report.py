"""hpo.md and its plots, from a study's storage, and `python -m cifar_lightning.hpo`."""

import matplotlib
import optuna
import pytest
from optuna.distributions import FloatDistribution

from cifar_lightning.hpo.__main__ import main
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

LR = FloatDistribution(0.001, 0.1, log=True)


@pytest.fixture
def sweep_dir(tmp_path):
    """A finished study of five trials in <tmp>/sweep/optuna.db: four completed, one pruned."""
    sweep = tmp_path / "sweep"
    study = open_study(open_storage(default_storage(sweep)), "demo", "val_loss", "minimize", build_sampler(None), None)
    study.set_user_attr(TASK_OVERRIDES, ["trainer.max_epochs=4", "data.data_dir=../shared/data"])
    trained = [(0.01, 0.1, 1.2), (0.05, 0.3, 0.9), (0.002, 0.2, 1.6), (0.03, 0.0, 1.0)]
    for number, (lr, dropout, loss) in enumerate(trained):
        trial = study.ask({"optim.lr": LR, "model.dropout": FloatDistribution(0.0, 0.5)})
        trial.report(loss + 0.3, 0)
        trial.report(loss, 1)
        trial.set_user_attr(OVERRIDES, [f"optim.lr={lr}", f"model.dropout={dropout}"])
        trial.set_user_attr(STATUS, "completed")
        trial.set_user_attr(RUN_DIR, str(sweep / f"trial_{number}"))
        study.tell(trial, loss)
    pruned = study.ask({"optim.lr": LR, "model.dropout": FloatDistribution(0.0, 0.5)})
    pruned.report(2.0, 0)
    pruned.set_user_attr(STATUS, "pruned")
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    return sweep


def test_hpo_md_names_the_best_trial_and_the_commands_that_retrain_it(sweep_dir, capsys):
    assert main([str(sweep_dir)]) == 0
    report = (sweep_dir / "hpo.md").read_text()
    assert capsys.readouterr().out.strip() == str(sweep_dir / "hpo.md")
    assert "## Best trial: 1, val_loss 0.9000" in report
    best = optuna.load_study(study_name="demo", storage=default_storage(sweep_dir)).best_trial
    assert best.number == 1
    exact = "python train.py trainer.max_epochs=4 data.data_dir=../shared/data optim.lr=0.05 model.dropout=0.3"
    assert f"    {exact}\n" in report
    assert "    python train.py data.data_dir=../shared/data optim.lr=0.05 model.dropout=0.3\n" in report  # full length
    assert "5 (4 complete, 1 pruned)" in report and "| 4 | pruned |  | 1 |" in report
    for plot in ("optimization_history.png", "intermediate_values.png", "param_importances.png", "slice.png"):
        assert f"![{plot}]({plot})" in report and (sweep_dir / plot).stat().st_size > 1000


def test_the_plots_leave_matplotlibs_style_as_they_found_it(sweep_dir):
    """Optuna's plots switch matplotlib to its ggplot style; figures drawn after hpo.md (the OOD and evaluation
    figures, in a test run or a notebook) must keep the default colours."""
    with matplotlib.rc_context():  # whatever ran before, from matplotlib's defaults; restored after the test
        matplotlib.rcdefaults()
        before = dict(matplotlib.rcParams)
        assert main([str(sweep_dir)]) == 0
        assert (sweep_dir / "slice.png").is_file()  # the plots that switch the style were drawn
        changed = {key for key, value in matplotlib.rcParams.items() if str(before[key]) != str(value)}
    assert not changed, sorted(changed)


def test_a_folder_without_a_study_is_refused(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "holds no optuna.db: it is not the sweep directory of a search" in capsys.readouterr().err
    assert main([default_storage(tmp_path / "other"), "--study", "nope", "--out", str(tmp_path)]) == 2
    assert "holds no study 'nope'" in capsys.readouterr().err
