"""OOD metrics against values computed by hand on tiny score sets, and thresholds from validation scores."""

import pytest
import torch

from cifar_lightning.ood.detection import detection_rates, histogram_threshold, ood_metrics, percentile_threshold


def scores(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_metrics_match_hand_computed_values():
    id_scores, ood_scores = scores(0.1, 0.2, 0.3, 0.4), scores(0.35, 0.5, 0.6, 0.7)
    metrics = ood_metrics(id_scores, ood_scores, threshold=0.3)
    # AUROC: of the 16 (ID, OOD) pairs, only (0.4, 0.35) has the OOD image scored lower.
    assert metrics["auroc"] == pytest.approx(15 / 16)
    # Keeping 95% of ID needs the threshold at 0.4: then the OOD image at 0.35 is accepted, 1 of 4.
    assert metrics["fpr95"] == pytest.approx(0.25)
    # At 0.3: ID 0.1, 0.2, 0.3 kept (3/4), every OOD image caught (4/4).
    assert (metrics["id_kept"], metrics["ood_caught"], metrics["detection_acc"]) == pytest.approx((0.75, 1.0, 0.875))


def test_aupr_by_hand():
    # OOD positive, thresholds 0.4, 0.3, 0.2, 0.1 give (recall, precision) (0.5, 1), (0.5, 0.5), (1, 2/3), (1, 0.5);
    # from (0, 1), the trapezoids sum to 0.5 + 0 + 0.5 * (0.5 + 2/3) / 2 + 0 = 0.7917.
    metrics = ood_metrics(scores(0.1, 0.3), scores(0.2, 0.4))
    assert metrics["aupr_out"] == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3))
    assert metrics["auroc"] == pytest.approx(0.75)
    assert metrics["fpr95"] == pytest.approx(0.5)
    assert "detection_acc" not in metrics  # no threshold given


def test_perfect_and_reversed_separation():
    perfect = ood_metrics(scores(0, 1, 2), scores(5, 6, 7), threshold=3.0)
    assert perfect["auroc"] == perfect["aupr_in"] == perfect["aupr_out"] == perfect["detection_acc"] == 1.0
    assert perfect["fpr95"] == 0.0
    reversed_ = ood_metrics(scores(5, 6, 7), scores(0, 1, 2), threshold=3.0)
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0 and reversed_["detection_acc"] == 0.0


def test_detection_rates_count_images_at_the_threshold_as_id():
    rates = detection_rates(scores(1, 2), scores(2, 3), 2.0)
    assert rates == {"id_kept": 1.0, "ood_caught": 0.5, "detection_acc": 0.75}


def test_percentile_threshold_keeps_the_asked_share():
    val = torch.randperm(1000).double()  # 0 .. 999 in random order
    assert percentile_threshold(val, 0.95) == 949.0  # exactly 950 of 1000 are <= 949
    assert percentile_threshold(val, 1.0) == 999.0
    assert (val <= percentile_threshold(val, 0.9)).double().mean() == 0.9


def test_histogram_threshold_is_the_edge_of_the_bulk():
    bulk = torch.linspace(0, 10, 10_000, dtype=torch.float64)
    stragglers = scores(19.5, 20.0)  # 2 images in the top bins, under 0.1% of 10,002
    threshold = histogram_threshold(torch.cat([bulk, stragglers]), bins=20, min_fraction=0.001)
    assert threshold == pytest.approx(10.0)  # the upper edge of the bin [9, 10]
    assert histogram_threshold(torch.cat([bulk, stragglers]), bins=20, min_fraction=0.0) == pytest.approx(20.0)
    assert histogram_threshold(scores(3, 3, 3)) == 3.0
