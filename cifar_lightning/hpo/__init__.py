"""Hyperparameter search with Optuna through Hydra (python train.py -m hparams_search=<name>).

space.py: the search space in Hydra's sweep syntax; study.py: the study in its RDB storage; sweeper.py:
the Hydra sweeper that asks, launches and tells trials; trial.py: a trial's own side (reporting and pruning);
report.py and __main__.py: hpo.md and its plots.
"""
