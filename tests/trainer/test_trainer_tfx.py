"""The real tfx.components.Trainer with run_fn, in tiny LocalDagRunner pipelines: export, report, warm start."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from components.trainer import cycles, data, model as model_lib, train
from components.trainer.config import CUSTOM_CONFIG_KEY, TrainerConfig
from components.trainer.embedding_cache import EmbeddingCache, backbone_id
from serving.contract import MODEL_METADATA_FILE
from serving.layout import LABELS_FILE, WARMUP_FILE
from tests.trainer.helpers import generator, rendered_items, split_pattern, write_splits

# Each test may set up a real Trainer run (LocalDagRunner, Xception at 71x142): a minute or
# two on 2 quiet cores, several times that beside a training job.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Tiny on purpose: these runs check wiring and artifacts, test_trainer_learnability checks learning.
CONFIG = TrainerConfig(
    image_height=71, image_width=142, batch_size=4, steps_per_epoch=2,
    scratch_epochs=2, warmup_epochs=1, bn_recalibration_batches=2,
    head_epochs=1, fine_tune_epochs=1, weights="none",
)
FIRST_SIGNERS = range(3)
SECOND_SIGNERS = range(4)


def _run_trainer(root: Path, name: str, examples_dir: Path, base_model_uri: str | None = None,
                 config: TrainerConfig = CONFIG) -> dict[str, Path]:
    """Importer(s) -> Trainer(run_fn) through LocalDagRunner; returns the Trainer's output folders."""
    examples = tfx.dsl.Importer(
        source_uri=str(examples_dir), artifact_type=standard_artifacts.Examples,
        properties={"split_names": '["train", "eval"]'},
    ).with_id("examples")
    nodes = [examples]
    base_model = None
    if base_model_uri:
        previous = tfx.dsl.Importer(source_uri=base_model_uri, artifact_type=standard_artifacts.Model).with_id("base")
        nodes.append(previous)
        base_model = previous.outputs["result"]
    trainer = tfx.components.Trainer(
        run_fn="components.trainer.run.run_fn",
        examples=examples.outputs["result"],
        base_model=base_model,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config={CUSTOM_CONFIG_KEY: config.to_dict()},
    )
    pipeline_root = root / name
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name=name, pipeline_root=str(pipeline_root), components=[*nodes, trainer],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / f"{name}.sqlite")),
    ))
    (model_uri,) = (pipeline_root / "Trainer" / "model").iterdir()
    (model_run,) = (pipeline_root / "Trainer" / "model_run").iterdir()
    return {"model": model_uri, "serving": model_uri / "Format-Serving", "model_run": model_run}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_tfx")
    examples_dir = root / "examples_1"
    splits = write_splits(examples_dir, rendered_items(FIRST_SIGNERS, per_signer=8), eval_every=4)
    config = CONFIG.replace(embedding_cache_dir=str(root / "Embeddings"))
    return {"root": root, "splits": splits, "examples": examples_dir,
            **_run_trainer(root, "first", examples_dir, config=config)}


@pytest.fixture(scope="module")
def first_model(first_run):
    return tf.saved_model.load(str(first_run["serving"]))


def test_trainer_exports_a_saved_model_that_serves_png_jpeg_and_gif(first_run, first_model):
    loaded = first_model
    assert set(loaded.signatures) == {"serving_default", "predict_label", "classify", "verify", "transformed_features"}
    gen = generator()
    images = [gen.render_signature(7, 1, 20, fmt) for fmt in ("png", "jpg", "gif")]
    default = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert set(default) == {"probabilities"}  # the seed's answer shape: {"predictions": [[p0, p1, p2], ...]}
    out = loaded.signatures["predict_label"](image_bytes=tf.constant(images))
    assert set(out) == {"probabilities", "label", "score"}
    assert out["probabilities"].shape == (3, 3) and out["probabilities"].dtype == tf.float32
    assert out["label"].shape == (3,) and out["label"].dtype == tf.string
    assert out["score"].shape == (3,) and out["score"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy(), default["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_allclose(tf.reduce_sum(out["probabilities"], axis=1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["score"].numpy(), tf.reduce_max(out["probabilities"], axis=1).numpy())


def test_the_export_holds_the_serving_functions_and_no_per_layer_keras_traces(first_run):
    # Loading revives every function in the file: the serving check, the Evaluator and each version swap
    # pay for Keras's ~500 per-layer traces if they are saved (export.py's _keras_traces_off).
    saved_model = saved_model_pb2.SavedModel.FromString((first_run["serving"] / "saved_model.pb").read_bytes())
    names = [function.signature.name for function in saved_model.meta_graphs[0].graph_def.library.function]
    assert any("_network" in name for name in names)  # the one saved forward pass every signature calls
    assert not [name for name in names if "layer_call" in name]


def test_label_vocabulary_is_the_sorted_training_labels(first_run):
    labels = (first_run["serving"] / LABELS_FILE).read_text().split()
    assert labels == sorted({label for _, label in first_run["splits"]["train"]}) == [
        "signer_00", "signer_01", "signer_02"]
    assert (first_run["serving"] / WARMUP_FILE).stat().st_size > 0
    metadata = json.loads((first_run["serving"] / MODEL_METADATA_FILE).read_text())
    assert metadata["labels"] == labels


def test_report_predictions_and_tensorboard_logs_are_written_beside_the_model(first_run, first_model):
    run_dir = first_run["model_run"]
    lines = (run_dir / "eval_predictions.jsonl").read_text().splitlines()
    eval_items = first_run["splits"]["eval"]
    assert len(lines) == len(eval_items)
    served = first_model.signatures["predict_label"](
        image_bytes=tf.constant([image for image, _ in eval_items]))
    labels = (first_run["serving"] / LABELS_FILE).read_text().split()
    for line, (_, label), probabilities in zip(lines, eval_items, served["probabilities"].numpy()):
        prediction = json.loads(line)
        assert prediction["label"] == label
        # The Keras model on the training pipeline's inputs answers what the served softmax answers (the
        # served `label` may be the open set's "unknown" for this barely trained model).
        assert prediction["predicted"] == labels[int(probabilities.argmax())]
        assert abs(prediction["score"] - float(probabilities.max())) < 1e-5
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["keras_version"].startswith("2.")
    assert summary["init"] == "random" and summary["schedule"] == train.SCHEDULE_FROM_SCRATCH
    assert summary["init_weights_file"] is None and summary["init_weights_sha256"] is None
    assert [h["phase"] for h in summary["history"]] == ["from_scratch"] * CONFIG.scratch_epochs
    for png in ("curves.png", "confusion_matrix.png"):
        assert (run_dir / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(run_dir.rglob("events.out.tfevents.*"))


def test_warm_start_begins_from_the_previous_weights_and_grows_the_head_for_a_new_signer(first_run):
    root = first_run["root"]
    examples_dir = root / "examples_2"
    splits = write_splits(examples_dir, rendered_items(SECOND_SIGNERS, per_signer=8), eval_every=4)
    labels = sorted({label for _, label in splits["train"]})

    # The model training starts from holds the previous export's weights, read here straight
    # from its variables/ checkpoint (by shape: these three shapes occur once each).
    start, _, carried, _ = train.initial_model(CONFIG, labels, first_run["serving"])
    reader = tf.train.load_checkpoint(str(first_run["serving"] / "variables" / "variables"))
    by_shape = {}
    for key, shape in reader.get_variable_to_shape_map().items():
        by_shape.setdefault(tuple(shape), []).append(key)
    backbone = model_lib.backbone_of(start)
    kernel, _ = start.get_layer(model_lib.HEAD_NAME).get_weights()
    starting = [backbone.get_layer("block1_conv1").kernel.numpy(),
                backbone.get_layer("block14_sepconv2").pointwise_kernel.numpy(), kernel[:, :3]]
    for value in starting:
        (key,) = by_shape[value.shape]
        np.testing.assert_array_equal(value, reader.get_tensor(key))
    assert carried == 3 and kernel.shape[1] == 4

    # The full cycle prunes its embedding cache: of three stale backbones and the serving model's (the
    # stalest of all), it keeps the serving model's and its own new one (embedding_cache_keep=2).
    cache_dir = root / "Embeddings_second"
    first_backbone = json.loads((first_run["serving"] / MODEL_METADATA_FILE).read_text())["backbone"]
    for age, name in enumerate(["stale_1", "stale_2", "stale_3", first_backbone]):
        shard = cache_dir / name / "rows.tfrecord.gz"
        shard.parent.mkdir(parents=True)
        shard.write_bytes(b"")
        os.utime(shard, (1_000_000 - age, 1_000_000 - age))
    second = _run_trainer(root, "second", examples_dir, base_model_uri=str(first_run["model"]),
                          config=CONFIG.replace(cycle="full", embedding_cache_dir=str(cache_dir),
                                                embedding_cache_keep=2))
    second_backbone = json.loads((second["serving"] / MODEL_METADATA_FILE).read_text())["backbone"]
    assert second_backbone != first_backbone
    assert {path.name for path in cache_dir.iterdir()} == {first_backbone, second_backbone}
    assert (second["serving"] / LABELS_FILE).read_text().split() == labels
    out = tf.saved_model.load(str(second["serving"])).signatures["serving_default"](
        image_bytes=tf.constant([splits["eval"][0][0]]))
    assert out["probabilities"].shape == (1, 4)
    summary = json.loads((second["model_run"] / "report" / "summary.json").read_text())
    assert summary["init"] == "warm_start" and summary["carried_labels"] == 3
    assert summary["schedule"] == train.SCHEDULE_TWO_PHASE
    assert [h["phase"] for h in summary["history"]] == ["head", "fine_tune"]
    assert summary["cycle"]["kind"] == "full" and summary["cycle"]["reason"].startswith("asked for")


def _model_variables(export_dir: Path) -> dict[str, np.ndarray]:
    """The classifier's variables in the export's checkpoint (the serving module's `model`), by key."""
    reader = tf.train.load_checkpoint(str(export_dir / "variables" / "variables"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key.startswith("model/")}


def test_a_fast_cycle_trains_the_head_on_cached_embeddings_and_keeps_the_backbone_byte_for_byte(first_run):
    """From the first model, with a new signer: the head trains on the cache the first (full) run filled, only
    the new records are embedded, and every backbone variable of the export equals the base model's."""
    root = first_run["root"]
    examples_dir = root / "examples_fast"
    splits = write_splits(examples_dir, rendered_items(SECOND_SIGNERS, per_signer=8), eval_every=4)
    config = CONFIG.replace(embedding_cache_dir=str(root / "Embeddings"))
    fast = _run_trainer(root, "fast", examples_dir, base_model_uri=str(first_run["model"]), config=config)
    summary = json.loads((fast["model_run"] / "report" / "summary.json").read_text())
    assert summary["cycle"]["kind"] == "fast", summary["cycle"]
    assert summary["schedule"] == cycles.SCHEDULE_HEAD_ON_EMBEDDINGS and summary["carried_labels"] == 3
    # The first run's rendering of signers 0-2 is the same bytes (same seed): cached; signer 3's is new.
    new_train = sum(1 for _, label in splits["train"] if label == "signer_03")
    assert summary["embeddings"] == {**summary["embeddings"], "embedded": new_train,
                                     "cached": len(splits["train"]) - new_train}
    assert (fast["serving"] / LABELS_FILE).read_text().split() == [f"signer_0{i}" for i in SECOND_SIGNERS]

    before, after = _model_variables(first_run["serving"]), _model_variables(fast["serving"])
    assert len(after) > 200 and before.keys() == after.keys()
    # The head grew from 3 to 4 signers (its kernel and bias); every other variable is the backbone's.
    head = [key for key in before if before[key].shape != after[key].shape]
    assert sorted(after[key].shape for key in head) == [(4,), (2048, 4)]
    for key in before.keys() - set(head):
        assert before[key].tobytes() == after[key].tobytes(), key
    # What the served model answers is what the Trainer predicted from the cached features.
    lines = [json.loads(line) for line in (fast["model_run"] / "eval_predictions.jsonl").read_text().splitlines()]
    served = tf.saved_model.load(str(fast["serving"])).signatures["predict_label"](
        image_bytes=tf.constant([image for image, _ in splits["eval"]]))
    for line, label, score in zip(lines, served["label"].numpy(), served["score"].numpy()):
        assert line["predicted"] == label.decode() and abs(line["score"] - float(score)) < 1e-4

    # The fast run kept what it embedded, under its backbone's id as restored from its export: the next cycle
    # on the same split embeds nothing.
    restored, _ = model_lib.load_exported_classifier(fast["serving"], CONFIG.image_size)
    cache = EmbeddingCache(config.embedding_cache_dir, backbone_id(restored))
    # Both versions' metadata name that backbone: the fast cycle kept the first run's.
    for version in (first_run["serving"], fast["serving"]):
        assert json.loads((version / MODEL_METADATA_FILE).read_text())["backbone"] == cache.backbone
    again = cache.embed_split(restored, data.expand_files(split_pattern(examples_dir, "train")), config)
    assert (again.embedded, again.cached) == (0, len(splits["train"]))
