"""Which spans the Trainer (and Evaluator) get: every span, or the newest N, one artifact per span.

Why not TFX's own pieces (checked with LocalDagRunner, TFX 1.16):
- resolver functions (canned_resolver_functions.all_spans / rolling_range) on
  `example_gen.outputs["examples"]`, or on a producer Channel in the same
  pipeline, see only the current run's span;
- a Resolver node with SpanRangeStrategy sees every run's artifacts but keeps
  all of them: when a span is processed twice (a run with no new inbox files
  and caching off re-processes the latest span), that span is returned twice
  and its examples would be trained on twice.
SpanWindowStrategy runs in a Resolver node (so it sees every run) and keeps the
newest artifact of each span.
"""
from __future__ import annotations

import logging

import ml_metadata as mlmd
from tfx import types
from tfx.dsl.components.base.base_node import BaseNode
from tfx.dsl.components.common import resolver
from tfx.types import channel, standard_artifacts

from components.ingest.executor import EXAMPLES_PROPERTY

log = logging.getLogger(__name__)

SPAN_PROPERTY = "span"
EXAMPLES_KEY = "examples"


class SpanWindowStrategy(resolver.ResolverStrategy):
    """The newest Examples artifact of each span, oldest span first.

    `rolling_window` > 0 keeps only the newest that many spans; 0 keeps all.
    Spans that ingested zero examples (every new record was a duplicate or
    invalid) are left out, so they do not use up the window.
    """

    def __init__(self, rolling_window: int = 0):
        if rolling_window < 0:
            raise ValueError(f"rolling_window must be >= 0, got {rolling_window}")
        self._rolling_window = rolling_window

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]] | None:
        del store
        return {key: self._select(artifacts) for key, artifacts in input_dict.items()}

    def _select(self, artifacts: list[types.Artifact]) -> list[types.Artifact]:
        newest: dict[int, types.Artifact] = {}
        for artifact in artifacts:
            if not artifact.has_custom_property(SPAN_PROPERTY):
                continue
            if artifact.has_custom_property(EXAMPLES_PROPERTY) and not artifact.get_int_custom_property(
                EXAMPLES_PROPERTY
            ):
                continue
            span = artifact.get_int_custom_property(SPAN_PROPERTY)
            if span not in newest or _age(artifact) > _age(newest[span]):
                newest[span] = artifact
        spans = sorted(newest)
        if self._rolling_window:
            spans = spans[-self._rolling_window :]
        log.info("training spans: %s", spans)
        return [newest[span] for span in spans]


def _age(artifact: types.Artifact) -> tuple[int, int]:
    return artifact.mlmd_artifact.create_time_since_epoch, artifact.id


def training_spans(
    example_gen: BaseNode, rolling_window: int | None = None, node_id: str = "training_spans"
) -> resolver.Resolver:
    """A Resolver node: the Examples to train on, from every run of `example_gen`.

    Add it to the pipeline's components and pass `.outputs["examples"]` to the
    Trainer/Evaluator. `rolling_window=None` (or 0) means every span.
    """
    node = resolver.Resolver(
        strategy_class=SpanWindowStrategy,
        config={"rolling_window": rolling_window or 0},
        **{
            EXAMPLES_KEY: channel.Channel(
                type=standard_artifacts.Examples, producer_component_id=example_gen.id, output_key=EXAMPLES_KEY
            )
        },
    ).with_id(node_id)
    # The channel names only the producer, so the ordering must be explicit.
    node.add_upstream_node(example_gen)
    return node
