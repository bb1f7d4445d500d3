"""What one pipeline run did, read back from MLMD and the artifacts it wrote.

The runner prints this after every run: spans and record counts from ingestion,
the Evaluator's metrics and verdict (with the failing metric, value and
threshold when a model is not blessed), the weakest signers and those with too
few eval examples to be judged (from the Evaluator's per-signer slices), the
verifiers' EER, FAR and FRR overall and the signers with the worst EER (keys of
the Evaluator's overall slice, pipeline/definition/verification_metrics.py), the
serving check's verdict (or that it did not run), the version pushed, and how
long each component took.

Layer: training_server. May import ML Metadata and serving.contract, and TFMA, definition.evaluation and
definition.verification_metrics when a run has an evaluation.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from components.serving_check.checks import SKIPPED_NOT_BLESSED
from serving.contract import INGEST_COUNTS, VERIFICATION_METRIC_PREFIX

PIPELINE_RUN_CONTEXT = "pipeline_run"
NODE_CONTEXT = "node"
# Signers printed as the weakest, lowest accuracy first; verifiers printed as the worst, highest EER first.
WEAKEST_SIGNERS = 3
# What `serving_check` says: ServingCheck's verdict, or that it skipped a model the Evaluator did not bless
# (when a pipeline gives it the Evaluator's blessing; this one does not).
CHECK_PASSED, CHECK_FAILED, CHECK_NOT_RUN = "passed", "failed", "not run"


@dataclass(frozen=True)
class SignerResult:
    """One signer's eval slice, as the Evaluator measured the candidate on it."""

    signer: str
    correct: int
    examples: int
    accuracy: float
    # Upper end of the Wilson interval the per-signer floor is put on (1.0 when the slice is too small to judge).
    upper_bound: float | None
    # False when the slice has fewer than the gate's min_signer_examples: the gate did not judge it.
    judged: bool = True

    def describe(self) -> str:
        detail = f"upper bound {self.upper_bound:.2f}" if self.judged and self.upper_bound is not None else "not judged"
        return f"{self.signer} {self.correct}/{self.examples} ({detail})"

    def to_json(self) -> dict[str, Any]:
        return {"signer": self.signer, "correct": self.correct, "examples": self.examples,
                "accuracy": self.accuracy, "upper_bound": self.upper_bound, "judged": self.judged}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignerResult:
        """The inverse of to_json (what the scheduler's status file holds)."""
        return cls(data["signer"], data["correct"], data["examples"], data["accuracy"], data.get("upper_bound"),
                   data.get("judged", True))


@dataclass(frozen=True)
class VerifierResult:
    """One enrolled signer's verifier on the eval split, as the Evaluator measured the candidate's (None: the
    signer lacked the trials that rate needs)."""

    signer: str
    eer: float | None
    frr: float | None
    far_random: float | None
    far_skilled: float | None

    def describe(self) -> str:
        rates = [f"{name} {value:.2f}" for name, value in (("FRR", self.frr), ("FAR random", self.far_random),
                                                          ("FAR skilled", self.far_skilled)) if value is not None]
        eer = f"EER {self.eer:.2f}" if self.eer is not None else "EER -"
        return f"{self.signer} {eer}" + (f" ({', '.join(rates)})" if rates else "")

    def to_json(self) -> dict[str, Any]:
        return {"signer": self.signer, "eer": self.eer, "frr": self.frr, "far_random": self.far_random,
                "far_skilled": self.far_skilled}


@dataclass
class RunSummary:
    run_id: str
    timings: dict[str, float] = field(default_factory=dict)  # component id -> seconds
    states: dict[str, str] = field(default_factory=dict)  # component id -> COMPLETE / FAILED / CACHED ...
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = field(default_factory=dict)  # "Node.key" -> artifacts
    ingest: dict[str, Any] = field(default_factory=dict)
    # From the Trainer's report/summary.json: init, init_weights_sha256, schedule, eval_accuracy, examples.
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    blessed: bool | None = None
    not_blessed_reasons: list[str] = field(default_factory=list)
    # Per-signer slices of the candidate, in the Evaluator's order; min_signer_examples is the gate's, as run.
    signers: list[SignerResult] = field(default_factory=list)
    min_signer_examples: int | None = None
    # The candidate's verification metrics on the overall slice (names as verification_metrics writes them,
    # the per-signer ones left out), and each enrolled signer's verifier.
    verification: dict[str, float] = field(default_factory=dict)
    verifiers: list[VerifierResult] = field(default_factory=list)
    # None when ServingCheck did not run or skipped the model (serving_check then says which).
    infra_blessed: bool | None = None
    infra_reason: str = ""
    serving_check: str | None = None  # a CHECK_* value, or None when there is no ServingCheck output
    pushed_version: str | None = None
    pushed_path: str | None = None

    @property
    def weakest_signers(self) -> list[SignerResult]:
        """The WEAKEST_SIGNERS signers with the lowest accuracy (on a tie, the one with more evidence first)."""
        ranked = sorted(self.signers, key=lambda s: (s.accuracy, -s.examples, s.signer))
        return ranked[:WEAKEST_SIGNERS]

    @property
    def worst_verifiers(self) -> list[VerifierResult]:
        """The WEAKEST_SIGNERS verifiers with the highest EER (those without one last)."""
        ranked = sorted(self.verifiers, key=lambda v: (v.eer is None, -(v.eer or 0.0), v.signer))
        return ranked[:WEAKEST_SIGNERS]

    @property
    def signers_too_few_examples(self) -> list[SignerResult]:
        """Signers whose eval slice was too small for the gate to judge."""
        return [s for s in self.signers if not s.judged]

    @property
    def result(self) -> str:
        """One word for the run's outcome: pushed, not_blessed, serving_check_failed or not_pushed."""
        if self.pushed_version:
            return "pushed"
        if self.blessed is False:
            return "not_blessed"
        if self.infra_blessed is False:
            return "serving_check_failed"
        return "not_pushed"

    def to_json(self) -> dict[str, Any]:
        """Plain data for the scheduler's status file (artifacts are left out)."""
        return {
            "run_id": self.run_id,
            "result": self.result,
            "blessed": self.blessed,
            "not_blessed_reasons": self.not_blessed_reasons,
            "weakest_signers": [s.to_json() for s in self.weakest_signers],
            "signers_too_few_examples": [s.to_json() for s in self.signers_too_few_examples],
            "min_signer_examples": self.min_signer_examples,
            "verification": self.verification,
            "worst_verifiers": [v.to_json() for v in self.worst_verifiers],
            "serving_check": self.serving_check,
            "infra_blessed": self.infra_blessed,
            "infra_reason": self.infra_reason,
            "pushed_version": self.pushed_version,
            "pushed_path": self.pushed_path,
            "ingest": self.ingest,
            "training": self.training,
            "metrics": self.metrics,
            "timings": self.timings,
            "states": self.states,
        }

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}"]
        if self.ingest:
            forgeries = f" ({self.ingest['forgeries']} forgeries)" if self.ingest.get("forgeries") else ""
            counts = ", ".join(f"{self.ingest[k]} {k.replace('_', ' ')}" + (forgeries if k == "examples" else "")
                               for k in INGEST_COUNTS if k in self.ingest)
            splits = ", ".join(f"{n} {split}" for split, n in self.ingest.get("splits", {}).items())
            out.append(f"ingested span {self.ingest.get('span', '?')}: {counts}" + (f" ({splits})" if splits else ""))
        if self.training:
            if self.training.get("cycle"):
                out.append(cycle_line(self.training))
            out.append(training_line(self.training))
        if self.metrics:
            out.append("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(self.metrics.items())))
        if self.blessed is True:
            out.append("blessed: yes")
        elif self.blessed is False:
            out.append("not blessed: " + ("; ".join(self.not_blessed_reasons) or "see the Evaluator's output"))
        out += signer_lines(self.weakest_signers, self.signers_too_few_examples, self.min_signer_examples)
        out += verification_lines(self.verification, self.worst_verifiers)
        out += serving_check_lines(self.serving_check, self.infra_reason)
        if self.pushed_version:
            out.append(f"pushed: version {self.pushed_version} -> {self.pushed_path}")
        else:
            out.append("pushed: nothing (serving_model unchanged)")
        for node, seconds in self.timings.items():
            out.append(f"  {node:<24} {self.states.get(node, ''):<9} {seconds:7.1f} s")
        return out


def signer_lines(weakest: Sequence[SignerResult], too_few: Sequence[SignerResult],
                 min_examples: int | None) -> list[str]:
    """The weakest signers and those with too few eval examples to judge: for the run summary and `signflow status`."""
    out = []
    if weakest:
        out.append("weakest signers: " + ", ".join(s.describe() for s in weakest))
    if too_few:
        out.append(f"too few eval examples to judge (< {min_examples}): "
                   + ", ".join(f"{s.signer} {s.correct}/{s.examples}" for s in too_few))
    return out


def verification_lines(verification: dict[str, float], worst: Sequence[VerifierResult]) -> list[str]:
    """The verifiers' error rates overall and the worst signers' (nothing for an evaluation without them)."""
    if not verification:
        return []
    # NOTE: imported here, as TFMA is: only a summary with an evaluation gets this far.
    from pipeline.definition import verification_metrics as vm

    if not verification.get(vm.TRIALS[vm.GENUINE]):
        return ["verification: not measured (no verify signature, or no genuine eval image of an enrolled signer)"]
    trials = ", ".join(f"{round(verification.get(vm.TRIALS[kind], 0))} {kind}" for kind in vm.TRIALS)
    kinds = ", ".join(f"{kind} {verification[name]:.4f}" for kind, name in (("random", vm.FAR_RANDOM),
                                                                          ("skilled", vm.FAR_SKILLED))
                      if name in verification)
    line = (f"verification: EER {verification[vm.EER]:.4f}; at threshold {verification[vm.THRESHOLD]:.4f} "
            f"FRR {verification[vm.FRR]:.4f}, FAR {verification[vm.FAR]:.4f} ({kinds}); trials: {trials}")
    if verification.get(vm.EER_INCREASE):
        line += f"; EER {verification[vm.EER_INCREASE]:+.4f} vs serving"
    out = [line]
    if worst:
        out.append("worst verifiers: " + ", ".join(v.describe() for v in worst))
    return out


def serving_check_lines(serving_check: str | None, infra_reason: str | None) -> list[str]:
    """The serving check's verdict (nothing when there was no ServingCheck output)."""
    if serving_check == CHECK_FAILED:
        return [f"serving check: failed: {infra_reason}"]
    return [f"serving check: {serving_check}"] if serving_check is not None else []


def open_store(metadata_path: str | os.PathLike) -> mlmd.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(config)


def latest_run_id(store: mlmd.MetadataStore) -> str | None:
    runs = store.get_contexts_by_type(PIPELINE_RUN_CONTEXT)
    return max(runs, key=lambda c: c.create_time_since_epoch).name if runs else None


def summarize(metadata_path: str | os.PathLike, run_id: str | None = None) -> RunSummary:
    store = open_store(metadata_path)
    run_id = run_id or latest_run_id(store)
    if run_id is None:
        raise RuntimeError(f"no pipeline run recorded in {metadata_path}")
    summary = RunSummary(run_id=run_id)
    run = store.get_context_by_type_and_name(PIPELINE_RUN_CONTEXT, run_id)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    for execution in executions:
        node = _node_id(store, execution.id)
        summary.timings[node] = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
        summary.states[node] = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        output_events = [e for e in store.get_events_by_execution_ids([execution.id])
                         if e.type == metadata_store_pb2.Event.OUTPUT]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in output_events])}
        for event in output_events:
            key = f"{node}.{event.path.steps[0].key}" if event.path.steps else node
            summary.outputs.setdefault(key, []).append(artifacts[event.artifact_id])
    read_outputs(summary)
    return summary


def read_outputs(summary: RunSummary) -> None:
    """Fill the ingestion, evaluation and delivery parts of `summary` from its output artifacts."""
    _read_ingest(summary)
    _read_training(summary)
    _read_evaluation(summary)
    _read_delivery(summary)


def _node_id(store: mlmd.MetadataStore, execution_id: int) -> str:
    for context in store.get_contexts_by_execution(execution_id):
        if store.get_context_types_by_id([context.type_id])[0].name == NODE_CONTEXT:
            return context.name.split(".", 1)[-1]
    return f"execution-{execution_id}"


def _outputs(summary: RunSummary, suffix: str) -> list[metadata_store_pb2.Artifact]:
    return [a for key, arts in summary.outputs.items() if key.endswith(suffix) for a in arts]


def _custom(artifact: metadata_store_pb2.Artifact, name: str) -> Any:
    value = artifact.custom_properties.get(name)
    if value is None:
        return None
    return getattr(value, value.WhichOneof("value"))


def _read_ingest(summary: RunSummary) -> None:
    for examples in _outputs(summary, "ExampleGen.examples"):
        report = Path(examples.uri) / "ingest_summary.json"
        if report.exists():
            summary.ingest = json.loads(report.read_text())
        summary.ingest.setdefault("span", _custom(examples, "span"))


# What the run summary keeps of the Trainer's report/summary.json (components/trainer/report.py).
TRAINING_KEYS = ("cycle", "embeddings", "init", "init_weights_sha256", "schedule", "best_epoch", "eval_accuracy", "num_train_examples",
                 "num_eval_examples", "train_seconds")


def _read_training(summary: RunSummary) -> None:
    for model_run in _outputs(summary, "Trainer.model_run"):
        report = Path(model_run.uri) / "report" / "summary.json"
        if report.exists():
            values = json.loads(report.read_text())
            summary.training = {key: values.get(key) for key in TRAINING_KEYS}


def cycle_line(training: dict[str, Any]) -> str:
    """One line: a fast or a full cycle, why, and how many embeddings came from the cache."""
    cycle = training["cycle"]
    line = f"cycle: {cycle.get('kind')} ({cycle.get('reason')})"
    if cycle.get("drift") is not None:
        line += f", embedding drift {cycle['drift']:.2f}"
    embeddings = training.get("embeddings") or {}
    if embeddings:
        line += (f"; train embeddings {embeddings.get('cached', 0)} cached, {embeddings.get('embedded', 0)} "
                 "computed")
    return line


def training_line(training: dict[str, Any]) -> str:
    """One line: how the backbone started (with the weights file's checksum) and what training gave."""
    init = training.get("init") or "?"
    if training.get("init_weights_sha256"):
        init += f" (weights sha256 {training['init_weights_sha256'][:12]}...)"
    accuracy = training.get("eval_accuracy")
    return (f"trained: init {init}, schedule {training.get('schedule') or '?'}, "
            f"{training.get('num_train_examples', '?')} train examples"
            + (f", eval accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""))


def _read_evaluation(summary: RunSummary) -> None:
    blessings = _outputs(summary, "Evaluator.blessing")
    if blessings:
        summary.blessed = _custom(blessings[0], "blessed") == 1
    evaluations = _outputs(summary, "Evaluator.evaluation")
    if evaluations:
        _read_evaluation_folder(summary, evaluations[0].uri)


def _read_evaluation_folder(summary: RunSummary, uri: str | os.PathLike) -> None:
    """Fill `summary` from the Evaluator's output folder: overall metrics, per-signer slices, failed thresholds."""
    import tensorflow_model_analysis as tfma  # heavy; only when there is an evaluation
    from tensorflow_model_analysis.writers.eval_config_writer import load_eval_run

    from pipeline.definition.evaluation import ACCURACY, LABEL_FEATURE, SIGNER_BOUND, SIGNER_CORRECT
    from pipeline.definition.signer_metrics import SignerAccuracyBound

    uri = str(uri)
    eval_config = load_eval_run(uri)[0]
    summary.min_signer_examples = _metric_setting(eval_config, SignerAccuracyBound.__name__, "min_examples")
    per_signer: dict[str, dict[str, float]] = {}
    for sliced in tfma.load_metrics(uri):
        keys = sliced.slice_key.single_slice_keys
        if len(keys) > 1 or (keys and keys[0].column != LABEL_FEATURE):
            continue
        values = {}
        for key_and_value in sliced.metric_keys_and_values:
            key = key_and_value.key
            if key.model_name in ("", "candidate") and not key.is_diff:
                value = key_and_value.value
                if value.HasField("double_value"):
                    values[key.name] = value.double_value.value
        if keys:
            per_signer[_slice_name(sliced.slice_key)] = values
        else:  # the overall slice; the signer bound belongs to the per-signer slices
            # Verification has lines of its own (verification_lines).
            summary.metrics.update({k: v for k, v in values.items() if k not in (SIGNER_BOUND, SIGNER_CORRECT)
                                    and not k.startswith(VERIFICATION_METRIC_PREFIX)})
            _read_verification(summary, values)
    counts = {}  # slice name -> " (3/4 right)"
    for where, values in per_signer.items():
        if ACCURACY not in values or "example_count" not in values:
            continue
        examples = round(values["example_count"])
        # Evaluations from before the signer bound have no correct count of their own.
        correct = round(values.get(SIGNER_CORRECT, values[ACCURACY] * examples))
        judged = summary.min_signer_examples is None or examples >= summary.min_signer_examples
        signer = where.partition("=")[2]
        summary.signers.append(
            SignerResult(signer, correct, examples, values[ACCURACY], values.get(SIGNER_BOUND), judged))
        counts[where] = f" ({correct}/{examples} right)"
    result = tfma.load_validation_result(uri)
    for failure in result.metric_validations_per_slice:
        where = _slice_name(failure.slice_key)
        for failed in failure.failures:
            summary.not_blessed_reasons.append(
                f"{failed.metric_key.name}{' (change vs serving)' if failed.metric_key.is_diff else ''}"
                f" on {where}: {failed.metric_value.double_value.value:.4f}{counts.get(where, '')},"
                f" threshold {_threshold(failed.metric_threshold)}"
            )
    if result.missing_thresholds or result.missing_slices:
        summary.not_blessed_reasons.append("some thresholds could not be checked (missing slices or metrics)")


def _read_verification(summary: RunSummary, overall: dict[str, float]) -> None:
    """The verification metrics of the overall slice: the overall ones, and per signer its verifier's."""
    from pipeline.definition import verification_metrics as vm

    per_signer: dict[str, dict[str, float]] = {}
    for name, value in overall.items():
        if not name.startswith(VERIFICATION_METRIC_PREFIX):
            continue
        metric, separator, signer = name.partition(vm.VERIFICATION_SIGNER_SEPARATOR)
        if separator:
            per_signer.setdefault(signer, {})[metric] = value
        else:
            summary.verification[name] = value
    summary.verifiers = [VerifierResult(signer, rates.get(vm.EER), rates.get(vm.FRR), rates.get(vm.FAR_RANDOM),
                                        rates.get(vm.FAR_SKILLED)) for signer, rates in sorted(per_signer.items())]


def _metric_setting(eval_config: Any, class_name: str, name: str) -> Any:
    """A setting of the first metric of class `class_name` in `eval_config` (None when there is none)."""
    for spec in eval_config.metrics_specs if eval_config else ():
        for metric in spec.metrics:
            if metric.class_name == class_name and metric.config:
                return json.loads(metric.config).get(name)
    return None


def _slice_name(slice_key: Any) -> str:
    parts = [f"{s.column}={s.bytes_value.decode() if s.HasField('bytes_value') else s.int64_value}"
             for s in slice_key.single_slice_keys]
    return ",".join(parts) or "overall"


def _threshold(threshold: Any) -> str:
    if threshold.HasField("value_threshold"):
        bounds = threshold.value_threshold
        if bounds.HasField("upper_bound") and not bounds.HasField("lower_bound"):
            return f"<= {bounds.upper_bound.value}"
        return f">= {bounds.lower_bound.value}"
    if threshold.HasField("change_threshold"):
        return f"change >= {threshold.change_threshold.absolute.value} vs serving"
    return str(threshold)


def _read_delivery(summary: RunSummary) -> None:
    infra = _outputs(summary, "ServingCheck.infra_blessing")
    if infra:
        reason = _custom(infra[0], "reason") or ""
        if reason.startswith(SKIPPED_NOT_BLESSED):
            # Given the Evaluator's blessing, ServingCheck serves nothing the Evaluator refused: a skip, not a verdict.
            summary.serving_check = CHECK_NOT_RUN
        else:
            summary.infra_blessed = _custom(infra[0], "blessed") == 1
            summary.infra_reason = reason
            summary.serving_check = CHECK_PASSED if summary.infra_blessed else CHECK_FAILED
    for pushed in _outputs(summary, "Pusher.pushed_model"):
        if _custom(pushed, "pushed") == 1:
            summary.pushed_version = str(_custom(pushed, "pushed_version"))
            summary.pushed_path = str(_custom(pushed, "pushed_destination"))
