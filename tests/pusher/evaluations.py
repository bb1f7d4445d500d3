"""A real Evaluator output and the Examples behind it, for what the Pusher records with a version.

TFX's Evaluator executor runs with the gate's EvalConfig over a small SavedModel
whose answers each test chooses (tests/pipeline/test_signer_gate.py's helpers: the
model answers the signer named in an example's bytes). The Examples artifacts carry
a span and an ingest_summary.json shaped as components/ingest/executor.py writes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tfx.types import standard_artifacts

from components.ingest.executor import SUMMARY_FILE
from pipeline.definition.configs import GateConfig
from tests.pipeline.test_signer_gate import SIGNERS, WEAK, Evaluation, _evaluate, _saved_model, _slice

# The eval split the Evaluator reads: WEAK gets 1 of its 2 examples right, the others 8 of 8 (17/18 overall).
EXPECTED_PER_SIGNER = {
    WEAK: {"accuracy": 0.5, "correct": 1, "total": 2},
    **{signer: {"accuracy": 1.0, "correct": 8, "total": 8} for signer in SIGNERS[1:]},
}
EXPECTED_ACCURACY = 17 / 18
# Two spans trained on: span 3 holds the eval examples above, span 4 only training ones.
SPANS = (3, 4)
EXPECTED_RECORD_COUNTS = {"records_read": 62, "examples": 54, "duplicates": 3, "unlabelled": 1, "quarantined": 4,
                          "train split": 36, "eval split": 18}


@dataclass
class Evaluated:
    """A Model artifact, the Evaluator's ModelEvaluation of it, and the Examples it was trained on."""

    model: standard_artifacts.Model
    evaluation: standard_artifacts.ModelEvaluation
    examples: list[standard_artifacts.Examples]
    result: Evaluation


def evaluate(root: Path) -> Evaluated:
    """Run the Evaluator on a model judged 17/18 (WEAK 1/2), with its Examples of spans 3 and 4."""
    model = _saved_model(root / "model", SIGNERS)
    result = _evaluate(root, model, _slice(1, 1, others=8), GateConfig())
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = result.uri
    # _evaluate wrote the eval split under root/examples: that is span 3.
    examples = [_examples(root / "examples", SPANS[0], records_read=24, examples=18, duplicates=2, unlabelled=1,
                          quarantined=3, splits={"train": 0, "eval": 18}),
                _examples(root / "examples-4", SPANS[1], records_read=38, examples=36, duplicates=1, unlabelled=0,
                          quarantined=1, splits={"train": 36, "eval": 0})]
    return Evaluated(model, evaluation, examples, result)


def _examples(uri: Path, span: int, splits: dict[str, int], **counts: int) -> standard_artifacts.Examples:
    examples = standard_artifacts.Examples()
    examples.uri = str(uri)
    examples.span = span
    uri.mkdir(parents=True, exist_ok=True)
    summary = {"span": span, **counts, "quarantine_reasons": {}, "label_conflicts": 0, "splits": splits,
               "labels": {}, "files": 1, "ingested_at": 1764230000, "landing_dir": f"/landing/span-{span}"}
    (uri / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return examples
