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

# TFX's concrete modules (the classes tfx.v1 re-exports), not `from tfx import v1`:
# tfx.v1 also imports its Google Cloud AI Platform extensions and, with them,
# google.cloud.aiplatform, which took 7 of the 18 s a run's process spent importing
# TFX on 2 cores; no signflow runner uses them.
from tfx.components import Evaluator, ExampleValidator, StatisticsGen, Trainer
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import metadata as tfx_metadata
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

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
) -> Pipeline:
    """The pipeline; runners call it with definition.configs.pipeline_arguments(config, paths)."""
    example_gen = SignatureExampleGen(paths.ingest, label_keys=tuple(label_keys))
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema = ImportSchemaGen(schema_file=paths.schema_path)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema.outputs["schema"]
    )
    data_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])

    if platform_resolvers:
        if span_window not in (None, 1):
            raise ValueError(f"span_window={span_window}: with platform_resolvers a run trains on its own span only")
        resolvers = []
        training_examples = example_gen.outputs["examples"]
        baseline = Resolver(
            strategy_class=LatestBlessedModelStrategy,
            model=Channel(type=standard_artifacts.Model),
            model_blessing=Channel(type=standard_artifacts.ModelBlessing),
        ).with_id("serving_baseline")
    else:
        spans = training_spans(example_gen, rolling_window=span_window)
        resolvers = [spans]
        training_examples = spans.outputs["examples"]
        baseline = Resolver(
            strategy_class=ServingBaselineStrategy,
            config={"model_base_path": paths.model_base_path(delivery.model_name)},
            model=Channel(type=standard_artifacts.Model),
            pushed_model=Channel(type=standard_artifacts.PushedModel),
        ).with_id("serving_baseline")

    if not trainer_config.embedding_cache_dir:
        trainer_config = trainer_config.replace(embedding_cache_dir=paths.embeddings_dir)
    trainer = Trainer(
        run_fn=f"{TRAINER_MODULE}.run_fn",
        examples=training_examples,
        base_model=baseline.outputs["model"],
        # Steps come from the typed trainer config (epochs over the data), not from here.
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
        custom_config={CUSTOM_CONFIG_KEY: trainer_config.to_dict()},
    )
    trainer.add_upstream_node(data_gate)

    evaluator = Evaluator(
        examples=training_examples,
        example_splits=["eval"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        eval_config=evaluation.eval_config(gate),
        module_path=evaluation.EVALUATOR_MODULE,
    )
    # Not given the Evaluator's blessing (which would let it skip a refused model): without it the two
    # depend only on the Trainer and run side by side (pipeline/runners/concurrent_dag.py).
    serving_check = ServingCheck(
        model=trainer.outputs["model"],
        examples=training_examples,
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
    metadata = (tfx_metadata.sqlite_metadata_connection_config(paths.metadata_path)
                if paths.metadata_path else None)
    return Pipeline(
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
