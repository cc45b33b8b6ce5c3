"""cifar-lightning's Slurm launcher plugin (Hydra only loads launchers from the hydra_plugins namespace package)."""
