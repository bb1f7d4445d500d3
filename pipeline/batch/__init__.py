"""`signflow batch-predict`: score folders, files or globs of images with one served model version, in Beam.

    command.py        the command line: flags, exit status, what it prints
    model_version.py  which version folder, and its labels
    signature.py      the serving signature's contract: checked before any worker starts, called on a batch
    inputs.py         folders, files and globs -> the files to read (folders walked like the inbox)
    model_handler.py  the Beam ModelHandler RunInference calls
    transform.py      the Beam steps: records -> prediction lines and error lines
    lines.py          the JSON lines written
    staging.py        outputs written beside their final names and renamed into place
    job.py            one run: the Beam pipeline, its outputs moved into place, its counts
    errors.py         BatchPredictError, with the exit status it stands for

Layer: batch. May import components.ingest (records, the inbox walker) and
serving (layout, images); definition.configs only for the default model folder.
Nothing else in pipeline/ imports batch/. What scripts call (bench/) is named
here: resolve_model, expand_inputs, run.
"""
from pipeline.batch.inputs import expand_inputs
from pipeline.batch.job import Summary, run
from pipeline.batch.model_version import ModelVersion, resolve_model

__all__ = ["ModelVersion", "Summary", "expand_inputs", "resolve_model", "run"]
