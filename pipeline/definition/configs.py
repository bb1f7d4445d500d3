"""The pipeline's configuration: typed, with defaults for `make run-local`, parsed once.

A run takes its settings from these defaults, optionally a JSON file
(`signflow run --config my.json`) with the same nesting as the dataclasses, and
`--set section.field=value` overrides. Unknown keys and wrong types fail at
start, before any component runs. A runner resolves the config's locations
once (`PipelineConfig.paths`) and turns both into create_pipeline's arguments
with `pipeline_arguments`, the one mapping every runner uses; nothing below
reads the environment.

Layer: definition. May import components.trainer.config, components.ingest.landing
(IngestPaths), serving.contract and definition.paths; no TFX.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from components.ingest.landing import IngestPaths
from components.trainer.config import TrainerConfig
from pipeline.definition.paths import METADATA_FILE, PipelinePaths
from serving.contract import RECORD_LABEL_KEY


@dataclass(frozen=True)
class GateConfig:
    """When a candidate is good enough to serve (the Evaluator's thresholds, docs/delivery.md#the-gate-evaluator)."""

    # Top-1 accuracy on the eval split that every candidate must reach.
    min_accuracy: float = 0.9
    # How much worse than the version serving now a candidate may be (absolute accuracy).
    max_accuracy_drop: float = 0.02
    # The floor for every single signer, put on the upper end of the Wilson interval of its top-1 accuracy:
    # a signer holds the model back only when even that optimistic end is below it (blocks a model that
    # ruins one signer, not one that missed 1 of a signer's 2 eval images).
    min_signer_accuracy: float = 0.6
    # z of that interval: 1.96 is a two-sided 95% interval (its upper end alone, a 97.5% one-sided bound);
    # larger is more lenient, 0 puts the floor on the plain accuracy.
    signer_confidence_z: float = 1.96
    # A signer with fewer eval examples is not judged (the run summary lists it). 3 is the smallest slice
    # the defaults can fail at all: 0 right of 2 still has an upper bound of 0.66, 0 of 3 has 0.56 < 0.6.
    min_signer_examples: int = 3
    # Verification (a model with a verify signature; one without is not judged on it): the equal error rate on
    # the eval split, genuine images against random and skilled forgeries pooled, may not exceed max_eer ...
    max_eer: float = 0.2
    # ... nor exceed the serving version's by more than this (when both verify). An eval split of ~2 genuine
    # images per signer moves the EER in steps of a few hundredths: a tighter margin would block on noise.
    max_eer_increase: float = 0.05

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "max_accuracy_drop", "min_signer_accuracy", "max_eer", "max_eer_increase"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"gate.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.signer_confidence_z < 0:
            raise ValueError(f"gate.signer_confidence_z must be >= 0, got {self.signer_confidence_z}")
        if self.min_signer_examples < 1:
            raise ValueError(f"gate.min_signer_examples must be >= 1, got {self.min_signer_examples}")


@dataclass(frozen=True)
class DeliveryConfig:
    """The serving check and the Pusher."""

    # TF Serving's model name: serving_model/<model_name>/<version>/.
    model_name: str = "xception"
    # Versions kept in the watched folder; older ones go unless serving or pinned.
    keep_versions: int = 5
    # The candidate must load (in a separate process) within this time.
    load_timeout_seconds: float = 120.0
    # Eval images replayed through the serving signatures by the serving check.
    check_requests: int = 32
    # Largest |served score - Trainer's score| the serving check accepts for one image
    # (labels must agree, but for a near-tie flipped to the runner-up). Measured after
    # the preprocessing fix of 2026-11-27: inputs equal to 1e-7, scores to ~1e-6; the
    # margin is for other CPUs' kernels. Before it, tf.image.resize_with_pad fitted
    # some images a pixel apart in the signature and scores differed by up to 0.09.
    score_tolerance: float = 0.01


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """What every runner's config holds besides its locations: PipelineConfig here, KubeflowV2Config for Kubeflow."""

    pipeline_name: str = "signflow"
    # The JSON key that holds the label in the seed's `examples` lists ("caption" is allowed).
    label_key: str = RECORD_LABEL_KEY
    # Beam pipeline options for ExampleGen, StatisticsGen and the Evaluator.
    beam_pipeline_args: tuple[str, ...] = ()
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    # NOTE: fixed for every config here; a runner's config that lets users choose
    # one declares it again as a field (PipelineConfig.span_window, KubeflowV2Config.enable_cache).
    # Train on the newest N spans; None trains on every span ingested so far.
    span_window: ClassVar[int | None] = None
    # Let the orchestrator skip steps whose inputs and settings did not change.
    enable_cache: ClassVar[bool] = False
    # Inputs resolved by the orchestrator instead of signflow's Python resolvers (create_pipeline says why).
    platform_resolvers: ClassVar[bool] = False

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Keys ingestion reads labels from: label_key, then RECORD_LABEL_KEY ("label") as the fallback."""
        return (self.label_key,) if self.label_key == RECORD_LABEL_KEY else (self.label_key, RECORD_LABEL_KEY)

    @property
    def all_beam_args(self) -> tuple[str, ...]:
        """Every Beam option the pipeline's Beam components get."""
        return self.beam_pipeline_args


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(PipelineSettings):
    """The settings of a run on this machine (`signflow run`, `signflow schedule`, `signflow ingest`, Airflow)."""

    # Relative paths are relative to the repository root (the runner resolves them).
    pipeline_root: Path = Path("pipeline_root")
    inbox_dir: Path = Path("data/inbox")
    # The committed sample, ingested once with the first span; None to train on the inbox only.
    sample_dir: Path | None = Path("data/sample")
    serving_dir: Path = Path("serving_model")
    schema_path: Path = Path("components/schema/schema.pbtxt")
    # Train on the newest N spans; None trains on every span ingested so far.
    span_window: int | None = None
    # Beam's DirectRunner. On the committed sample in_memory beats multi_processing
    # (64 s vs 84 s for ingest + statistics + validation on 2 cores: worker start-up
    # dominates); use multi_processing with --direct_num_workers for larger inboxes,
    # and the README's arguments for Dataflow, Flink or Spark.
    beam_pipeline_args: tuple[str, ...] = ("--direct_running_mode=in_memory",)

    @property
    def model_base_path(self) -> Path:
        return self.serving_dir / self.delivery.model_name

    @property
    def run_root(self) -> Path:
        """This pipeline's folder under pipeline_root: artifacts, MLMD and ingestion state."""
        return self.pipeline_root / self.pipeline_name

    @property
    def metadata_path(self) -> Path:
        return self.run_root / METADATA_FILE

    @property
    def ingest_state_dir(self) -> Path:
        """Landed spans and ledgers: keep as long as the MLMD store (together they say what was ingested)."""
        return self.run_root / "ingest_state"

    @property
    def quarantine_dir(self) -> Path:
        """Refused records, span-<N>.jsonl, beside the inbox where people look."""
        return self.inbox_dir.parent / "quarantine"

    @property
    def unlabelled_dir(self) -> Path:
        """Valid images without a label, span-<N>.jsonl, ready to be labelled and dropped back."""
        return self.inbox_dir.parent / "unlabelled"

    def paths(self, root: Path | None = None) -> PipelinePaths:
        """Every location, absolute: relative settings are resolved against `root` (default: the working directory)."""
        base = Path.cwd() if root is None else root

        def where(path: Path) -> str:
            return str((base / path).resolve())

        return PipelinePaths(
            pipeline_root=where(self.run_root),
            metadata_path=where(self.metadata_path),
            schema_path=where(self.schema_path),
            serving_dir=where(self.serving_dir),
            ingest=IngestPaths(
                inbox_dir=where(self.inbox_dir),
                state_dir=where(self.ingest_state_dir),
                quarantine_dir=where(self.quarantine_dir),
                unlabelled_dir=where(self.unlabelled_dir),
                sample_dir=where(self.sample_dir) if self.sample_dir else None,
            ),
        )


def pipeline_arguments(config: PipelineSettings, paths: PipelinePaths) -> dict[str, Any]:
    """create_pipeline's keyword arguments for a runner's config and its resolved paths: the one mapping of every
    runner."""
    return {
        "pipeline_name": config.pipeline_name,
        "paths": paths,
        "trainer_config": config.trainer,
        "gate": config.gate,
        "delivery": config.delivery,
        "label_keys": config.label_keys,
        "span_window": config.span_window,
        "beam_pipeline_args": config.all_beam_args,
        "enable_cache": config.enable_cache,
        "platform_resolvers": config.platform_resolvers,
    }


def load_config(path: Path | None = None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Defaults <- JSON file at `path` <- `section.field=value` overrides (values in JSON syntax)."""
    return from_dict(PipelineConfig, read_settings(path, overrides))


def read_settings(path: Path | None, overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Plain data from the JSON file at `path` with `section.field=value` overrides applied (values in JSON
    syntax, else a bare string)."""
    data: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form field=value or section.field=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string, e.g. --set trainer.weights=none
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from plain data, checking names and types."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready data (paths as strings) for logging and for components' custom_config."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        item = args[0] if args and args[-1] is Ellipsis else None
        if item is not None:
            return tuple(_convert(item, v, where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{where} must have {len(args)} items, got {value!r}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if typing.get_origin(hint) is typing.Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {args}, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{where} must be a path, got {value!r}")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r}")
    return value
