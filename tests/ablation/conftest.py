"""The ablation tests' shared sweep: seven configurations x three seeds, aggregated once."""

import pytest

from cifar_lightning.ablation import aggregate
from tests.ablation.jobs import ACCURACIES, write_job


@pytest.fixture(scope="session")
def full_sweep(tmp_path_factory):
    """Seven configurations x three seeds, all finished; 'improved' seed 2 stopped early (3 epochs)."""
    sweep = tmp_path_factory.mktemp("sweep")
    job = 0
    for name, accuracies in ACCURACIES.items():
        for seed, accuracy in enumerate(accuracies):
            write_job(sweep, job, name, seed, accuracy, epochs=3 if (name, seed) == ("improved", 2) else 4)
            job += 1
    return sweep, aggregate(sweep)
