"""`signflow batch-predict`: score every image in folders, files or globs with one served model version, in Beam.

    signflow batch-predict --model serving_model/xception --input data/inbox --output out/predictions.jsonl
    signflow batch-predict ... --version 3 --batch-size 16 --top-k 5 -- --runner=DataflowRunner --project=...

Inputs are read exactly as ingestion reads them (components.ingest.records):
JSON Lines, TF Serving row/columnar `.json` bodies, `examples` lists, image
files, and <label>/<image> folders (a folder is walked like the inbox). The
model is the newest version folder under --model (TF Serving's rule, via
serving.layout) or --version, and is called through its `predict_label`
signature (label, score, probabilities: serving_default's probabilities with
their top label), so a batch prediction is what the server would have answered.

Outputs, one JSON object per line; every record read lands in exactly one:

    --output   {"source", "sha256", "label", "score", "top_k": [{"label", "score"}],
                "model_version", "input_label"}
    --errors   {"source", "reason", "message"}   (default: <output>.errors.jsonl)

Both are written inside hidden `.<name>.<run>.partial/` folders beside them and
renamed into place after the pipeline succeeds, the errors file first and the
predictions file last: a file under the final name is always complete, and a
failed run leaves the previous result as it was. Lines are not in input order
(Beam keeps none); `source` ("file:line", or the file for an image) is unique
and is the join key.

Exit status: 0 when the pipeline ran, however many records were refused; 1 for
an infrastructure failure (model folder, version, labels file, output folder,
or the pipeline itself); 2 for a bad command line or an input that names nothing.

Layer: batch, its top: may import every other batch module, and
definition.configs for the default model folder.
"""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.batch.errors import BatchPredictError
from pipeline.batch.inputs import expand_inputs
from pipeline.batch.job import DEFAULT_BATCH_SIZE, DEFAULT_TOP_K, run
from pipeline.batch.model_version import resolve_model
from pipeline.batch.staging import check_output
from pipeline.definition.configs import PipelineConfig
from serving.images import DEFAULT_MAX_PIXELS

ERRORS_SUFFIX = ".errors.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `signflow batch-predict` options; Beam's own options follow `--` or come as --beam-arg."""
    default_model = str(PipelineConfig().model_base_path)
    parser.add_argument("--model", default=default_model,
                        help=f"model folder holding version folders (default: {default_model})")
    parser.add_argument("--version", type=int, help="version folder to use (default: the newest, as TF Serving serves)")
    parser.add_argument("--input", action="append", required=True, metavar="DIR_OR_GLOB",
                        help="a folder (walked like the inbox), a file, or a glob (quote it); repeatable")
    parser.add_argument("--output", required=True, metavar="OUT.jsonl", help="prediction lines")
    parser.add_argument("--errors", metavar="OUT.errors.jsonl",
                        help=f"refused records (default: the output with {ERRORS_SUFFIX})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help="images per model call (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                        help="ranked labels per prediction (default: %(default)s)")
    parser.add_argument("--label-key", dest="label_keys", action="append",
                        help="record key holding a record's own label; repeatable, first present wins (default: label)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest image accepted (default: %(default)s)")
    parser.add_argument("--beam-arg", dest="beam_arg", action="append", default=[], metavar="ARG",
                        help="a Beam pipeline option, e.g. --beam-arg=--runner=DataflowRunner; repeatable")
    parser.add_argument("beam_args", nargs=argparse.REMAINDER,
                        help="after `--`: Beam pipeline options (DirectRunner when none)")


def default_errors_path(output: str) -> str:
    """Where refused records go when --errors is not given: OUT.jsonl -> OUT.errors.jsonl."""
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ERRORS_SUFFIX


def main(args: argparse.Namespace) -> int:
    """Run `signflow batch-predict`: 0 when the pipeline ran, 1 on an infrastructure failure, 2 for bad usage."""
    if args.batch_size < 1:
        print("error: --batch-size must be 1 or more", file=sys.stderr)
        return 2
    if args.top_k < 0:
        print("error: --top-k must be 0 or more", file=sys.stderr)
        return 2
    beam_args = list(args.beam_arg) + [a for a in (args.beam_args or []) if a != "--"]
    errors_output = args.errors or default_errors_path(args.output)
    try:
        if os.path.abspath(errors_output) == os.path.abspath(args.output):
            raise BatchPredictError("--errors must differ from --output", status=2)
        model = resolve_model(args.model, args.version)
        files = expand_inputs(args.input)
        check_output(args.output)
        check_output(errors_output)
        print(f"model {model.base} version {model.version}; {len(files)} input files", flush=True)
        summary = run(
            model,
            files,
            args.output,
            errors_output,
            batch_size=args.batch_size,
            top_k=args.top_k,
            label_keys=tuple(args.label_keys or ("label",)),
            max_pixels=args.max_pixels,
            beam_args=beam_args,
        )
    except BatchPredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    print(f"read {summary.read} records: {summary.predicted} predicted, {summary.errors} errors")
    for reason, count in summary.errors_by_reason.items():
        print(f"  {reason}: {count}")
    print(f"model: loaded in {summary.model_load_s:.1f} s; {summary.model_calls} batches in {summary.model_call_s:.1f} s")
    print(f"predictions: {args.output}\nerrors: {errors_output}")
    if summary.read != summary.predicted + summary.errors:
        # Every record ends as one line of either file; a gap means lines were lost.
        print(f"error: {summary.read - summary.predicted - summary.errors} records are in neither output",
              file=sys.stderr)
        return 1
    return 0
