"""ood.md's tables go through cifar_lightning.tables: a heading, numbers right-aligned, names left."""

from cifar_lightning.ood.job import markdown
from cifar_lightning.report import Table


def test_a_metric_table_as_markdown():
    rows = [["knn", "95.00", "95.00"], ["msp|odd", "90.50", "90.50"]]
    table = Table("AUROC (%, higher is better)", ["detector", "mnist (far)", "mean"], rows)
    assert markdown(table) == (
        "## AUROC (%, higher is better)\n\n| detector | mnist (far) | mean |\n|---|---:|---:|\n"
        "| knn | 95.00 | 95.00 |\n| msp\\|odd | 90.50 | 90.50 |\n"
    )
