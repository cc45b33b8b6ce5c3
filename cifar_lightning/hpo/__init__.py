"""Hyperparameter search with Optuna through Hydra (python train.py -m hparams_search=<name>): the search
space (space.py), the study (study.py), the sweeper (sweeper.py), a trial's side (trial.py) and hpo.md."""
