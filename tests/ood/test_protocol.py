"""The split protocol (ood/protocol.py): OOD sets split into validation and test halves, the default detector chosen on
the validation halves alone, and a choice refused where only test data is at hand."""

import pytest
import torch
from torch import nn

from cifar_lightning.config.ood import OODSettings
from cifar_lightning.inference import Features
from cifar_lightning.ood.detection import score_ood
from cifar_lightning.ood.protocol import TestDataChoiceError, choose_detector, split_halves

#: Logits of 3 classes. ID images are confident; "msp-only" OOD images have a large max logit shared by two classes
#: (MSP catches them, max logit does not); "max-logit-only" ones have a small, lone max logit (the reverse).
ID, MSP_ONLY, MAX_LOGIT_ONLY = [5.0, 0.0, 0.0], [10.0, 10.0, 0.0], [2.0, -20.0, -20.0]


def features(rows: list[list[float]]) -> Features:
    logits = torch.tensor(rows)
    return Features(logits, logits.clone(), {"act": logits.mean(dim=1)})


def test_split_halves_are_disjoint_cover_the_set_and_follow_the_seed():
    val, test = split_halves(101, 0.5, seed=0)
    assert len(val) == 50 and len(test) == 51
    assert sorted(torch.cat([val, test]).tolist()) == list(range(101))
    assert torch.equal(split_halves(101, 0.5, seed=0)[0], val)
    assert not torch.equal(split_halves(101, 0.5, seed=1)[0], val)


def test_the_choice_is_made_on_the_validation_halves_and_ignores_the_test_halves():
    """Validation halves favour max logit, test halves MSP: the chosen detector is max logit, while the test tables
    (which the choice never saw) show MSP ahead."""
    n = 40
    val_half, _ = split_halves(n, 0.5, seed=0)
    ood_rows = [MAX_LOGIT_ONLY if i in set(val_half.tolist()) else MSP_ONLY for i in range(n)]
    settings = OODSettings(detectors=["msp", "max_logit"], validation_share=0.5, split_seed=0)
    ids = features([ID] * 30)
    result = score_ood(
        nn.Linear(3, 3), ids, torch.zeros(30, dtype=torch.long), ids, ids, {"cifar100": features(ood_rows)},
        sets={"cifar100": {"kind": "near"}}, settings=settings,
    )  # fmt: skip
    assert result.chosen == "max_logit"
    assert result.validation["max_logit"]["cifar100"]["auroc"] > result.validation["msp"]["cifar100"]["auroc"]
    assert result.detectors["msp"]["cifar100"]["auroc"] > result.detectors["max_logit"]["cifar100"]["auroc"]
    assert result.sets["cifar100"]["n_validation"] == 20 and result.sets["cifar100"]["n_test"] == 20
    assert result.to_json()["validation"]["chosen"] == "max_logit"


def test_near_sets_choose_and_every_set_does_when_none_is_near():
    validation = {
        "a": {"near1": {"auroc": 0.9}, "far1": {"auroc": 0.1}},
        "b": {"near1": {"auroc": 0.8}, "far1": {"auroc": 1.0}},
    }
    assert choose_detector(validation, {"near1": "near", "far1": "far"}) == "a"
    assert choose_detector(validation, {"near1": "far", "far1": "far"}) == "b"


def test_a_choice_without_validation_halves_is_refused():
    with pytest.raises(TestDataChoiceError, match="could only be chosen on the test sets"):
        choose_detector({}, {"cifar100": "near"})
