"""One batch-prediction job: the Beam pipeline over the input files, its two outputs moved into place, its counts.

Layer: batch. May import Beam and the other batch modules (not command).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from components.ingest.records import LandedFile
from pipeline.batch.errors import BatchPredictError
from pipeline.batch.model_handler import METRICS_NAMESPACE, ServingSignatureHandler
from pipeline.batch.model_version import ModelVersion
from pipeline.batch.staging import Staging
from pipeline.batch.transform import BatchPredict
from serving.images import DEFAULT_MAX_PIXELS

DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class Summary:
    read: int
    predicted: int
    errors: int
    errors_by_reason: dict[str, int]
    # From RunInference's metrics: what the model cost inside the run.
    model_load_s: float
    model_calls: int
    model_call_s: float


def run(
    model: ModelVersion,
    files: Sequence[LandedFile],
    output: str,
    errors_output: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = DEFAULT_TOP_K,
    label_keys: Sequence[str] = ("label",),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    beam_args: Sequence[str] = (),
) -> Summary:
    """Run the pipeline and move both outputs into place; BatchPredictError if it fails."""
    # Errors first, predictions last: the predictions file appearing is the sign that both are whole.
    staging = Staging([errors_output, output], run_id=uuid.uuid4().hex[:12])
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
        predictions, errors = pipeline | "BatchPredict" >> BatchPredict(
            files,
            ServingSignatureHandler(str(model.path), batch_size),
            model.labels,
            model.version,
            top_k,
            label_keys=label_keys,
            max_pixels=max_pixels,
        )
        for name, lines, final in (("Predictions", predictions, output), ("Errors", errors, errors_output)):
            _ = lines | f"Write{name}" >> beam.io.WriteToText(staging.partial(final), num_shards=1,
                                                              shard_name_template="")
        result = pipeline.run()
        state = result.wait_until_finish()
        if state != PipelineState.DONE:
            raise BatchPredictError(f"the pipeline ended in state {state}")
        counts, distributions = _metrics(result)
        staging.move_into_place()
    except BatchPredictError:
        raise
    except Exception as err:  # noqa: BLE001 - any pipeline failure is reported as one, with its cause
        raise BatchPredictError(f"the pipeline failed: {type(err).__name__}: {err}") from err
    finally:
        staging.remove()
    by_reason = {
        name.split(".", 1)[1]: value for name, value in sorted(counts.items()) if name.startswith("errors.")
    }
    load = distributions.get("load_model_latency_milli_secs")
    calls = distributions.get("inference_batch_latency_micro_secs")
    return Summary(
        read=counts.get("records_read", 0),
        predicted=counts.get("predicted", 0),
        errors=counts.get("errors", 0),
        errors_by_reason=by_reason,
        model_load_s=load.sum / 1e3 if load else 0.0,
        model_calls=calls.count if calls else 0,
        model_call_s=calls.sum / 1e6 if calls else 0.0,
    )


def _metrics(result: Any) -> tuple[dict[str, int], dict[str, Any]]:
    """(counters, distributions) of this command's namespace, which RunInference's own metrics share."""
    found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))

    def value(metric: Any) -> Any:
        return metric.committed if metric.committed is not None else metric.attempted

    counters: dict[str, int] = {}
    for counter in found["counters"]:
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value(counter) or 0)
    distributions = {d.key.metric.name: value(d) for d in found["distributions"] if value(d) is not None}
    return counters, distributions
