"""The whole pipeline, for real, at a small size: LocalDagRunner, every component, SQLite MLMD.

Run 1 ingests a small generated sample and pushes version V1 in TF Serving's
layout. Run 2 adds data whose labels are deliberately wrong and must not be
pushed. Then a version this pipeline did not push is rolled back, and the
baseline resolver must again pick V1's model: the baseline is what serves.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from components.trainer.config import TrainerConfig
from pipeline.configs import DeliveryConfig, GateConfig, PipelineConfig
from pipeline.local_runner import run
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE, list_versions

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SIGNERS = 3
PER_SIGNER = 14

# Few steps at Xception's smallest input: this checks the plumbing, not the accuracy
# (tests/trainer has the learnability test).
TINY_TRAINER = TrainerConfig(
    image_height=71, image_width=142, batch_size=8,
    scratch_epochs=2, warmup_epochs=1, steps_per_epoch=2, bn_recalibration_batches=1,
    head_epochs=1, fine_tune_epochs=1, shuffle_buffer=64,
)


def _generator():
    spec = importlib.util.spec_from_file_location("generate_signatures", REPO / "data" / "generate_signatures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signflow")
    _generator().generate(seed=11, signers=SIGNERS, per_signer=PER_SIGNER, out_dir=root / "sample")
    (root / "inbox").mkdir()
    return root


def _config(root: Path, gate: GateConfig) -> PipelineConfig:
    return PipelineConfig(
        pipeline_root=root / "pipeline_root",
        inbox_dir=root / "inbox",
        sample_dir=root / "sample",
        serving_dir=root / "serving_model",
        schema_path=REPO / "components" / "schema" / "schema.pbtxt",
        trainer=TINY_TRAINER,
        gate=gate,
        delivery=DeliveryConfig(check_requests=8),
    )


@pytest.fixture(scope="module")
def first_run(workspace):
    # The plumbing run: any accuracy is good enough to be pushed.
    config = _config(workspace, GateConfig(min_accuracy=0.0, min_signer_accuracy=0.0, max_accuracy_drop=1.0))
    return config, run(config)


def test_first_run_pushes_v1_in_tf_serving_layout(first_run):
    import tensorflow as tf

    config, summary = first_run
    assert summary.ingest["records_read"] == SIGNERS * PER_SIGNER
    assert summary.blessed is True and summary.infra_blessed is True
    versions = list_versions(config.model_base_path)
    assert [str(v) for v in versions] == [summary.pushed_version]
    version_dir = config.model_base_path / summary.pushed_version
    for part in (SAVED_MODEL_FILE, "variables", LABELS_FILE, WARMUP_FILE):
        assert (version_dir / part).exists(), part
    assert (version_dir / LABELS_FILE).read_text().split() == [f"signer_{i:02d}" for i in range(SIGNERS)]
    assert not [p.name for p in config.model_base_path.iterdir() if p.name.startswith(".incoming-")]

    model = tf.saved_model.load(str(version_dir))
    image = _generator().render_signature(seed=11, signer=1, sample=0)
    out = model.signatures["serving_default"](image_bytes=tf.constant([image]))
    assert sorted(out) == ["label", "probabilities", "score"]
    assert out["probabilities"].shape == (1, SIGNERS)
    for component in ("SignatureExampleGen", "Trainer", "Evaluator", "ServingCheck", "Pusher"):
        assert summary.states[component] == "COMPLETE", component


def test_run_with_wrong_labels_is_not_blessed_and_serving_is_untouched(first_run, workspace):
    config, first = first_run
    before = _tree_digest(config.serving_dir)
    # Every new image is labelled as the *next* signer: a model can't be right on both
    # these and the correctly labelled sample, so eval accuracy lands near 50%.
    gen = _generator()
    lines = []
    for signer in range(SIGNERS):
        for sample in range(100, 100 + 2 * PER_SIGNER):
            data = gen.render_signature(seed=11, signer=signer, sample=sample)
            lines.append(gen.record_line(data, gen.label_for((signer + 1) % SIGNERS)))
    (workspace / "inbox" / "relabelled.jsonl").write_text("\n".join(lines) + "\n")

    # A realistic bar this time: the gate, not the tiny training, must stop it.
    gated = dataclasses.replace(config, gate=GateConfig(min_accuracy=0.75, min_signer_accuracy=0.5))
    summary = run(gated)

    assert summary.ingest["examples"] == len(lines)
    assert summary.blessed is False
    assert any("sparse_categorical_accuracy" in reason for reason in summary.not_blessed_reasons)
    assert summary.pushed_version is None
    assert _tree_digest(config.serving_dir) == before
    # Run 2 warm-started from and was compared against the version serving: run 1's model.
    report = Path(summary.outputs["Trainer.model_run"][0].uri) / "report" / "summary.json"
    base_model = json.loads(report.read_text())["base_model"]
    assert base_model and base_model.startswith(first.outputs["Trainer.model"][0].uri)


def test_baseline_follows_the_serving_folder_through_rollback(first_run):
    import ml_metadata as mlmd
    from tfx import types
    from tfx.types import artifact_utils, standard_artifacts

    from components.baseline_resolver import ServingBaselineStrategy
    from pipeline.rollback import roll_back
    from pipeline.summary import open_store

    config, first = first_run
    store: mlmd.MetadataStore = open_store(config.metadata_path)

    def candidates(artifact_type) -> list[types.Artifact]:
        found = store.get_artifacts_by_type(artifact_type.TYPE_NAME)
        return [artifact_utils.deserialize_artifact(store.get_artifact_types_by_id([a.type_id])[0], a) for a in found]

    inputs = {"model": candidates(standard_artifacts.Model), "pushed_model": candidates(standard_artifacts.PushedModel)}
    strategy = ServingBaselineStrategy(model_base_path=str(config.model_base_path))
    v1_model_uri = first.outputs["Trainer.model"][0].uri
    assert [m.uri for m in strategy.resolve_artifacts(store, inputs)["model"]] == [v1_model_uri]

    # A newer version that no run of this pipeline pushed is serving: no baseline.
    v1 = int(first.pushed_version)
    shutil.copytree(config.model_base_path / str(v1), config.model_base_path / str(v1 + 10))
    assert strategy.resolve_artifacts(store, inputs)["model"] == []

    # Rolled back, V1 serves again, and it is the baseline again.
    roll_back(config.model_base_path, reason="test")
    assert list_versions(config.model_base_path) == [v1]
    assert [m.uri for m in strategy.resolve_artifacts(store, inputs)["model"]] == [v1_model_uri]
