"""The Trainer's report: per-signer accuracy in summary.json and as a chart, with real matplotlib."""
import json

from PIL import Image

from components.trainer import report
from components.trainer.predictions import Prediction

HISTORY = [{"phase": "from_scratch", "epoch": 1, "loss": 1.2, "accuracy": 0.5, "val_loss": 1.3, "val_accuracy": 0.4}]


def _predictions(outcomes: dict[str, str]) -> list[Prediction]:
    """One prediction per character of each signer's outcome string: "1" right, "0" wrong (taken for "other")."""
    return [Prediction(f"{label}-{i}", label, label if hit == "1" else "other", 0.9)
            for label, hits in outcomes.items() for i, hit in enumerate(hits)]


def test_report_writes_the_per_signer_chart_and_counts_weakest_first(tmp_path):
    predictions = _predictions({"signer_a": "1111", "signer_b": "100", "signer_c": "10", "signer_d": "0000",
                                "signer_e": "110"})
    labels = ["other", "signer_a", "signer_b", "signer_c", "signer_d", "signer_e"]

    report_dir = report.write_report(tmp_path, HISTORY, predictions, labels, {"init": "random"})

    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["per_signer"]["signer_b"] == {"correct": 1, "total": 3, "accuracy": 1 / 3}
    assert set(summary["per_signer"]) == {"signer_a", "signer_b", "signer_c", "signer_d", "signer_e"}
    assert summary["weakest"] == [
        {"label": "signer_d", "correct": 0, "total": 4, "accuracy": 0.0},
        {"label": "signer_b", "correct": 1, "total": 3, "accuracy": 1 / 3},
        {"label": "signer_c", "correct": 1, "total": 2, "accuracy": 0.5},
    ]
    assert summary["eval_accuracy"] == 8 / 16 and summary["init"] == "random"
    with Image.open(report_dir / "per_signer_accuracy.png") as chart:
        assert chart.format == "PNG" and chart.width == 800


def test_the_per_signer_chart_grows_with_the_number_of_signers(tmp_path):
    many = report.per_signer_accuracy(_predictions({f"signer_{i:03d}": "10"[: 1 + i % 2] for i in range(80)}))
    few = report.per_signer_accuracy(_predictions({f"signer_{i}": "1" for i in range(5)}))
    assert len(many) == 80 and many[0].accuracy == 0.5 and many[-1].accuracy == 1.0
    heights = []
    for name, signers in (("few", few), ("many", many)):
        path = report.plot_per_signer_accuracy(signers, tmp_path / f"{name}.png")
        with Image.open(path) as chart:
            heights.append(chart.height)
    # ~22 px a row at 100 dpi: every label keeps its own row.
    assert heights[1] >= heights[0] + 20 * 75
