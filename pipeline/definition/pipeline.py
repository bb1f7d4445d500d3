"""signflow's TFX pipeline: one factory, every path and setting an argument.

    SignatureExampleGen (a new span from the inbox)
      -> StatisticsGen -> ExampleValidator (against the committed schema) -> AnomaliesGate
    spans (Resolver: every span, or the newest N) + serving baseline (Resolver)
      -> Trainer (a fast cycle: a new head on the serving model's backbone from cached
                  embeddings; or a full cycle: Xception fine-tuned from the serving model)
      -> Evaluator (TFMA gate against the serving model)
      -> ServingCheck (loads and queries the candidate the way TF Serving would)
      -> Pusher (a new numbered version, atomically, in serving_model/<name>/)

Runners (pipeline/runners/) decide where this runs and resolve every location
into one PipelinePaths; this module decides what runs.

Layer: definition. May import components/, TFX, serving.contract and definition's
configs, paths and evaluation; model code only by module path (the Trainer's run_fn).
"""
from __future__ import annotations

from collections.abc import Sequence

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from components.anomalies_gate import AnomaliesGate
from components.baseline_resolver import ServingBaselineStrategy
from components.ingest.component import SignatureExampleGen
from components.ingest.spans import training_spans
from components.pusher.component import Pusher
from components.serving_check.component import ServingCheck
from components.trainer.config import CUSTOM_CONFIG_KEY, TrainerConfig
from pipeline.definition import evaluation
from pipeline.definition.configs import DeliveryConfig, GateConfig
from pipeline.definition.paths import PipelinePaths
from serving.contract import RECORD_LABEL_KEY

TRAINER_MODULE = "components.trainer.run"


def create_pipeline(
    *,
    pipeline_name: str,
    paths: PipelinePaths,
    trainer_config: TrainerConfig,
    gate: GateConfig,
    delivery: DeliveryConfig,
    label_keys: Sequence[str] = (RECORD_LABEL_KEY,),
    span_window: int | None = None,
    beam_pipeline_args: Sequence[str] = (),
    enable_cache: bool = False,
    # For orchestrators that run no Python resolver code: Kubeflow Pipelines V2 and
    # Vertex AI compile only TFX's LatestArtifactStrategy and LatestBlessedModelStrategy
    # (tfx/orchestration/kubeflow/v2/step_builder.py). The Trainer, Evaluator and
    # ServingCheck then take this run's span, and the baseline is the newest model the
    # Evaluator blessed rather than the one behind the newest version folder.
    platform_resolvers: bool = False,
) -> tfx.dsl.Pipeline:
    """The pipeline; runners call it with definition.configs.pipeline_arguments(config, paths)."""
    example_gen = SignatureExampleGen(paths.ingest, label_keys=tuple(label_keys))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.ImportSchemaGen(schema_file=paths.schema_path)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema.outputs["schema"]
    )
    data_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])

    if platform_resolvers:
        if span_window not in (None, 1):
            raise ValueError(f"span_window={span_window}: with platform_resolvers a run trains on its own span only")
        resolvers = []
        training_examples = example_gen.outputs["examples"]
        baseline = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing),
        ).with_id("serving_baseline")
    else:
        spans = training_spans(example_gen, rolling_window=span_window)
        resolvers = [spans]
        training_examples = spans.outputs["examples"]
        baseline = tfx.dsl.Resolver(
            strategy_class=ServingBaselineStrategy,
            config={"model_base_path": paths.model_base_path(delivery.model_name)},
            model=tfx.dsl.Channel(type=standard_artifacts.Model),
            pushed_model=tfx.dsl.Channel(type=standard_artifacts.PushedModel),
        ).with_id("serving_baseline")

    if not trainer_config.embedding_cache_dir:
        trainer_config = trainer_config.replace(embedding_cache_dir=paths.embeddings_dir)
    trainer = tfx.components.Trainer(
        run_fn=f"{TRAINER_MODULE}.run_fn",
        examples=training_examples,
        base_model=baseline.outputs["model"],
        # Steps come from the typed trainer config (epochs over the data), not from here.
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config={CUSTOM_CONFIG_KEY: trainer_config.to_dict()},
    )
    trainer.add_upstream_node(data_gate)

    evaluator = tfx.components.Evaluator(
        examples=training_examples,
        example_splits=["eval"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        eval_config=evaluation.eval_config(gate),
    )
    serving_check = ServingCheck(
        model=trainer.outputs["model"],
        examples=training_examples,
        blessing=evaluator.outputs["blessing"],
        model_run=trainer.outputs["model_run"],
        num_examples=delivery.check_requests,
        score_tolerance=delivery.score_tolerance,
        timeout_seconds=int(delivery.load_timeout_seconds),
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=serving_check.outputs["infra_blessing"],
        evaluation=evaluator.outputs["evaluation"],
        examples=training_examples,  # the spans and record counts the push record keeps
        serving_dir=paths.serving_dir,
        model_name=delivery.model_name,
        keep_versions=delivery.keep_versions,
    )

    # None for Kubeflow and Vertex AI, which keep their own ML Metadata.
    metadata = (tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata_path)
                if paths.metadata_path else None)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=paths.pipeline_root,
        metadata_connection_config=metadata,
        components=[
            example_gen, statistics_gen, schema, example_validator, data_gate,
            *resolvers, baseline, trainer, evaluator, serving_check, pusher,
        ],
        enable_cache=enable_cache,
        beam_pipeline_args=list(beam_pipeline_args),
    )
