"""A tiny LocalDagRunner pipeline (ServingCheck -> Pusher): the lineage `signflow versions` reads from MLMD, and
what the Pusher records with each version."""
# No `from __future__ import annotations`: TFX reads the component function's annotations as types.
import json
import shutil
from pathlib import Path

import pytest
from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.orchestration import metadata
from tfx.types import standard_artifacts

from components.pusher import records
from components.pusher.component import Pusher
from components.pusher.lineage import find_model_for_version, find_pushed_model_for_version, version_lineage
from components.serving_check.component import ServingCheck
from pipeline.cli import main as signflow
from pipeline.training_server.rollback import roll_back
from serving.layout import list_versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SPAN = 3


@component
def TinyTrainer(
    examples: InputArtifact[standard_artifacts.Examples],
    model: OutputArtifact[standard_artifacts.Model],
    model_run: OutputArtifact[standard_artifacts.ModelRun],
    saved_model: Parameter[str],
    eval_predictions: Parameter[str],
):
    """Stands in for the Trainer: emits the tiny SavedModel and its eval predictions, consuming `examples`."""
    shutil.copytree(saved_model, Path(model.uri) / "Format-Serving")
    Path(model_run.uri).mkdir(parents=True, exist_ok=True)
    (Path(model_run.uri) / "eval_predictions.jsonl").write_text(eval_predictions, encoding="utf-8")


def build_pipeline(root: Path, examples_dir: Path, tiny_model: Path, predictions: str) -> tfx.dsl.Pipeline:
    examples = tfx.dsl.Importer(
        source_uri=str(examples_dir),
        artifact_type=standard_artifacts.Examples,
        properties={"split_names": '["train", "eval"]', "span": SPAN},
    ).with_id("examples")
    blessing_dir = root / "blessing"
    blessing_dir.mkdir(exist_ok=True)
    blessing = tfx.dsl.Importer(
        source_uri=str(blessing_dir), artifact_type=standard_artifacts.ModelBlessing, custom_properties={"blessed": 1},
    ).with_id("evaluator_blessing")
    trainer = TinyTrainer(examples=examples.outputs["result"], saved_model=str(tiny_model), eval_predictions=predictions)
    serving_check = ServingCheck(
        model=trainer.outputs["model"],
        examples=examples.outputs["result"],
        blessing=blessing.outputs["result"],
        model_run=trainer.outputs["model_run"],
        server="saved_model",
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=blessing.outputs["result"],
        infra_blessing=serving_check.outputs["infra_blessing"],
        examples=examples.outputs["result"],
        serving_dir=str(root / "serving_model"),
    )
    return tfx.dsl.Pipeline(
        pipeline_name="lineage-test",
        pipeline_root=str(root / "pipeline_root"),
        components=[examples, blessing, trainer, serving_check, pusher],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(root / "metadata.sqlite")),
        enable_cache=False,
    )


def test_pushes_are_found_by_version_in_mlmd_before_and_after_a_rollback(tmp_path, examples_dir, tiny_model,
                                                                        trainer_predictions, capsys):
    predictions = "".join(json.dumps(line) + "\n" for line in trainer_predictions)
    # As signflow's ExampleGen writes it beside the splits.
    (examples_dir / "ingest_summary.json").write_text(json.dumps({
        "span": SPAN, "records_read": 7, "examples": 5, "duplicates": 1, "unlabelled": 0, "quarantined": 1,
        "splits": {"train": 1, "eval": 4}, "ingested_at": 1764230000}))
    pipeline = build_pipeline(tmp_path, examples_dir, tiny_model, predictions)
    for _ in range(2):
        tfx.orchestration.LocalDagRunner().run(pipeline)

    base = tmp_path / "serving_model" / "xception"
    first, second = list_versions(base)
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(str(tmp_path / "metadata.sqlite")))
    [infra_blessing, _] = store.get_artifacts_by_type("InfraBlessing")
    assert infra_blessing.custom_properties["blessed"].int_value == 1

    pushed = find_pushed_model_for_version(store, "xception", second)
    assert pushed.custom_properties["pushed_destination"].string_value == str(base / str(second))
    assert pushed.custom_properties["pipeline_name"].string_value == "lineage-test"
    run_id = pushed.custom_properties["pipeline_run_id"].string_value
    assert run_id
    models = sorted(store.get_artifacts_by_type("Model"), key=lambda artifact: artifact.id)
    assert find_model_for_version(store, "xception", second).id == models[1].id
    lineage = version_lineage(store, "xception", second)
    assert (lineage.spans, lineage.pipeline_run_id, lineage.model_uri) == ([SPAN], run_id, models[1].uri)
    # The push record says the same without MLMD, with the counts of the Examples trained on.
    record = records.read_record(base, second)
    assert (record.spans, record.pipeline_run_id, record.model_uri) == ([SPAN], run_id, models[1].uri)
    assert record.record_counts == {"records_read": 7, "examples": 5, "duplicates": 1, "unlabelled": 0,
                                    "quarantined": 1, "train split": 1, "eval split": 4}

    # After a rollback the serving version's Model (the next run's baseline) is found the same way.
    roll_back(base, reason="test")
    assert find_model_for_version(store, "xception", first).id == models[0].id

    assert signflow(["versions", "--model_base_path", str(base), "--metadata_path", str(tmp_path / "metadata.sqlite"), "--json"]) == 0
    rows = {row["version"]: row for row in json.loads(capsys.readouterr().out)["versions"]}
    assert rows[second]["status"] == "rolled back" and rows[first]["status"] == "serving"
    assert rows[first]["lineage_from"] == "mlmd"
    assert rows[first]["spans"] == [SPAN]
    assert rows[first]["model_uri"] == models[0].uri
