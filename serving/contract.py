"""What training and serving share: the one source of the names both sides of the wire use.

Layer: the bottom of `serving/`, below everything else in the project. It imports
the standard library only, so ingestion, the Trainer, the Pusher, batch
prediction and every serving module can import it without pulling in TFX, the
server or TensorFlow. (`call_signature` imports TensorFlow when called: only code
that already has a loaded SavedModel calls it.)

It holds:

- the SavedModel's signature, method, input and output names, as the Trainer's
  export writes them and the server, the serving check and batch prediction read them;
- the tf.Example feature keys of an ingested record and the JSON record keys of
  the inbox and the feedback endpoint;
- the names of the Evaluator's metrics that the Pusher records with each version;
- the label rule, with a lenient mode (ingestion) and a strict one (feedback);
- TF Serving's request-body shapes: row "instances" and columnar "inputs";
- the reason codes for refused images and records;
- the one way to write a file atomically and durably;
- the one way to call a SavedModel signature on arrays.
"""
from __future__ import annotations

import os
import secrets
import unicodedata
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np

# -- the SavedModel --------------------------------------------------------------------------

SERVE_TAG = "serve"
"""The MetaGraph tag TF Serving loads."""

SERVING_SIGNATURE = "serving_default"
"""Raw images in, `probabilities` out (the only output: REST :predict answers {"predictions": [[p0, p1, ...]]}).
Also TF Serving's signature when a request names none."""
PREDICT_LABEL_SIGNATURE = "predict_label"
"""Raw images in, top label, its score and the probabilities out: what signflow's client, CLI,
batch prediction and serving check call."""
IMAGE_SIGNATURES = (SERVING_SIGNATURE, PREDICT_LABEL_SIGNATURE)
"""The signatures of signflow's model that identify IMAGE_INPUT: their answered requests are request-logged (and
image-checked, see CHECKED_IMAGE_SIGNATURES)."""
CLASSIFY_SIGNATURE = "classify"
"""Serialized tf.Examples in, every class and its score out (TF Serving's Classify API, the Evaluator)."""

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

IMAGE_INPUT = "image_bytes"
"""serving_default's and predict_label's input: string [N], raw PNG/JPEG/GIF/BMP file bytes. Requests to it are
image-checked."""
PROBABILITIES_OUTPUT = "probabilities"
"""serving_default and predict_label: float32 [N, K], in the order of the version's assets/labels.txt
(and of "labels" in assets.extra/signflow_model.json)."""
LABEL_OUTPUT = "label"
"""predict_label: string [N], the most likely label (or UNKNOWN_LABEL, see there)."""
SCORE_OUTPUT = "score"
"""predict_label: float32 [N], that label's probability (for UNKNOWN_LABEL, see there)."""

MODEL_METADATA_FILE = "assets.extra/signflow_model.json"
"""A version folder's own description, relative to it: {"labels": [...] in probabilities order, "image_size":
[height, width], "signatures": {name: {"method", "inputs", "outputs"}}}. TF Serving ignores it (its metadata
API is unchanged); signflow's tools and people read it."""

# TF Serving's names for classify and regress signatures (tf.saved_model.CLASSIFY_INPUTS, ...).
CLASSIFY_INPUT = "inputs"
CLASSES_OUTPUT = "classes"
SCORES_OUTPUT = "scores"
REGRESS_INPUT = "inputs"
REGRESS_OUTPUT = "outputs"

VERIFY_SIGNATURE = "verify"
"""Raw images and the signer each one claims to be in; a calibrated score and the verdict out (writer-dependent
SVMs on the classifier's pooled features, docs/trainer.md#verification). Exported when the Trainer fitted
verification; the version's MODEL_METADATA_FILE then holds "verification" with the threshold and the signers."""
CHECKED_IMAGE_SIGNATURES = IMAGE_SIGNATURES + (VERIFY_SIGNATURE,)
"""The signatures of signflow's model whose IMAGE_INPUT values are checked before they reach the graph (headers,
the pixel limit) and whose batches, when the graph refuses one, run again request by request so that one
request's bad data (a damaged image, a signer not enrolled) fails only that request."""
CLAIMED_SIGNER_INPUT = "claimed_signer"
"""verify: string [N], the label each image claims. A signer the version does not verify fails the whole
request with INVALID_ARGUMENT naming it."""
VERIFY_SCORE_OUTPUT = "score"
"""verify: float32 [N], the calibrated score: one threshold means the same for every signer."""
GENUINE_OUTPUT = "genuine"
"""verify: bool [N], score >= threshold."""
THRESHOLD_OUTPUT = "threshold"
"""verify: float32 [N], the threshold `genuine` was decided with (the same on every row)."""

UNKNOWN_LABEL = "unknown"
"""predict_label's `label` when open-set identification is on (the version's MODEL_METADATA_FILE says so under
"verification": "open_set") and the image's similarity to the most probable signer's training references (the mean
cosine to the nearest few, "open_set_rule") is under the version's "open_set_threshold": its `score` is then that
similarity instead of a probability. Never a signer's label: check_label refuses it where a label becomes a class
(ingestion, feedback, enrolment), and the export refuses a model with a class of that name while open-set is on."""

VERIFICATION_SCORES_SIGNATURE = "transformed_features"
"""Serialized tf.Examples in (CLASSIFY_INPUT, the image as in classify), every enrolled signer's calibrated score
out: what the Evaluator computes verification error rates from. Exported with the verify signature only. The
name is TFMA's default for transformed features; the Evaluator (pipeline/definition/eval_predictions.py) calls it
on every eval batch when a model has it and skips models without it, so a version without verification still
evaluates."""
VERIFICATION_SCORES_OUTPUT = "verification_scores"
"""VERIFICATION_SCORES_SIGNATURE: float32 [N, S], the calibrated score of each image for each enrolled signer."""
VERIFICATION_SIGNERS_OUTPUT = "verification_signers"
"""VERIFICATION_SCORES_SIGNATURE: string [N, S], the enrolled signers in the columns' order (the same on every row)."""
VERIFICATION_THRESHOLD_OUTPUT = "verification_threshold"
"""VERIFICATION_SCORES_SIGNATURE: float32 [N], the verify signature's threshold (the same on every row). It also
returns PROBABILITIES_OUTPUT and CLASSES_OUTPUT, classify's scores and classes: the Evaluator takes a model's
predictions from the same call, and tells by the scores whose outputs they are when TFMA stores them unnamed."""

# -- records -----------------------------------------------------------------------------------

IMAGE_FEATURE = "image_raw"
"""tf.Example feature of an ingested record holding the image file's bytes."""
LABEL_FEATURE = "label"
"""tf.Example feature holding the label (UTF-8)."""
SHA256_FEATURE = "sha256"
"""tf.Example feature holding the hex sha256 of the image bytes (the split and de-duplication key)."""
GENUINE_FEATURE = "genuine"
"""tf.Example feature, int64: 1 for a genuine signature of the labelled signer, 0 for a forgery claimed as that
signer. Examples ingested before forgeries were recorded lack it: read it with default 1."""

REQUEST_IMAGE_FEATURE = "image"
"""The feature a Classify request puts the image under (the seed's requests)."""
CLASSIFY_IMAGE_FEATURES = (REQUEST_IMAGE_FEATURE, IMAGE_FEATURE)
"""Where the classify signature reads the image from, first non-empty wins; requests to it are image-checked."""

RECORD_IMAGE_KEYS = (IMAGE_INPUT, "image")
"""Keys of a JSON record (inbox line, feedback instance) that may hold the image, looked up in this order."""
BARE_TEXT_IMAGE_KEY = "image"
"""The one image key that may also hold bare base64 text, as the seed's records do. Under
IMAGE_INPUT a bare string stays refused: TF Serving's :predict reads it as raw bytes."""
B64_KEY = "b64"
"""TF Serving's binary value: {"b64": "<standard base64>"}."""
RECORD_LABEL_KEY = "label"
"""Key of a JSON record holding the label."""
GENUINE_KEY = "genuine"
"""Key of a JSON record saying whether the image is a genuine signature of the labelled signer: a JSON boolean,
true when absent or null; false marks a forgery claimed as that signer."""

INGEST_COUNTS = ("records_read", "examples", "duplicates", "unlabelled", "quarantined")
"""The counts of a span's ingest summary (components/ingest) that the run summary and the model folder view show,
in this order: records read, then what became of them (the four others add up to it)."""

# -- the Evaluator's metrics -----------------------------------------------------------------
# Computed by the gate (pipeline/definition/signer_metrics.py, TFMA's ExampleCount) on the
# overall slice and on each signer's slice (LABEL_FEATURE), read back by the Pusher
# (components/pusher/evaluation.py) into the push record that the dashboard shows.

ACCURACY_METRIC = "sparse_categorical_accuracy"
"""Top-1 accuracy, overall and per signer: the overall bounds of the gate are put on it. Named as TFMA's
SparseCategoricalAccuracy, whose values older push records hold."""
SIGNER_BOUND_METRIC = "signer_accuracy_upper_bound"
"""Per signer: the upper end of the Wilson interval of the accuracy, which the per-signer floor is put on.
Computed on the overall slice too, where it means nothing."""
SIGNER_CORRECT_SUFFIX = "/correct"
"""The bound's second key, `<bound name>/correct`: the slice's correct top-1 answers."""
SIGNER_CORRECT_METRIC = SIGNER_BOUND_METRIC + SIGNER_CORRECT_SUFFIX
EXAMPLE_COUNT_METRIC = "example_count"
"""TFMA's ExampleCount: the examples in a slice."""

# Verification, computed on the overall slice from VERIFICATION_SCORES_SIGNATURE (pipeline/definition/
# verification_metrics.py). Trials: an eval image claimed as its own enrolled signer (genuine), as every other
# enrolled signer (random forgery), and a `genuine` = 0 example claimed as its label (skilled forgery).
VERIFICATION_METRIC_PREFIX = "verification_"
"""Every verification metric's name starts with it."""
VERIFICATION_EER_METRIC = "verification_eer"
"""Equal error rate of genuine against all forgery trials, pooled over signers: the gate's absolute bound."""
VERIFICATION_EER_INCREASE_METRIC = "verification_eer_increase"
"""The candidate's VERIFICATION_EER_METRIC minus the serving version's: the gate's bound against the baseline.
0 when either model has no verification, or on a first run."""
VERIFICATION_FRR_METRIC = "verification_frr"
"""Genuine trials rejected at the model's threshold."""
VERIFICATION_FAR_METRIC = "verification_far"
"""Forgery trials (random and skilled) accepted at the model's threshold."""
VERIFICATION_RANDOM_SUFFIX = "_random"
VERIFICATION_SKILLED_SUFFIX = "_skilled"
"""EER and FAR names + a suffix: the same on random or on skilled forgeries only (skilled: only when the eval
split has some)."""
VERIFICATION_THRESHOLD_METRIC = "verification_threshold"
"""The threshold FAR and FRR were taken at."""
VERIFICATION_TRIALS_METRIC = "verification_trials"
"""+ "_genuine", "_random", "_skilled": how many trials of each kind the rates come from."""
VERIFICATION_SIGNER_SEPARATOR = "/"
"""Per signer: `<metric>/<signer>` (EER, FRR, FAR_random, FAR_skilled), computed on the overall slice, since a
signer's random forgeries are the other signers' images."""

# -- reason codes --------------------------------------------------------------------------------
# Short, stable codes written to the quarantine, to feedback answers and to batch prediction's
# error lines. serving.images raises the image ones.

INVALID_BASE64 = "invalid_base64"
EMPTY_IMAGE = "empty_image"
NOT_AN_IMAGE = "not_an_image"
CORRUPT_IMAGE = "corrupt_image"
TOO_MANY_PIXELS = "too_many_pixels"
UNSUPPORTED_FORMAT = "unsupported_format"

INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_IMAGE = "missing_image"
INVALID_IMAGE_FIELD = "invalid_image_field"
MISSING_LABEL = "missing_label"
INVALID_LABEL = "invalid_label"
INVALID_GENUINE = "invalid_genuine"
"""A "genuine" that is not a JSON boolean (the string "false" is the usual mistake), or one put on a whole request
body instead of on each record."""
UNKNOWN_JSON_SHAPE = "unknown_json_shape"
INVALID_COLUMNS = "invalid_columns"
UNREADABLE_FILE = "unreadable_file"
UNSUPPORTED_FILE = "unsupported_file"
INFERENCE_FAILED = "inference_failed"
"""An image that passed serving.images' checks but that the model's graph could not decode."""


class InvalidRecord(ValueError):
    """A record (or one of its fields) that cannot be used: `reason` is one of the codes above."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def json_type_name(value: Any) -> str:
    """A JSON value's type as messages about records name it ("a string", "null", ...)."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


# -- the label rule ---------------------------------------------------------------------------------

MAX_LABEL_CHARS = 256
"""Longest label the strict mode accepts."""

# Labels become lines of the model's assets/labels.txt, so a control character or a
# line/paragraph separator (str.splitlines splits on both) would corrupt the class list;
# a lone surrogate cannot be encoded as UTF-8 for the tf.Example.
_FORBIDDEN_LABEL_CATEGORIES = ("Cc", "Zl", "Zp", "Cs")


def check_label(value: Any, *, lenient: bool, names_a_class: bool = True) -> str | None:
    """The label `value` stands for, or InvalidRecord (MISSING_LABEL / INVALID_LABEL).

    Both modes refuse a value that is not a string and one holding a control
    character, a line or paragraph separator or a lone surrogate.

    names_a_class (ingestion, feedback, enrolment: the label becomes a class)
    also refuses UNKNOWN_LABEL. Batch prediction's expected labels are answers,
    not classes, and may be it (the open set's right answer for a stranger).

    lenient (ingestion): a missing (None) or blank label means "unlabelled" and
    gives None.

    strict (lenient=False, feedback, where a person sends one answer): a label is
    required, at most MAX_LABEL_CHARS long, without surrounding whitespace
    ("signer_03 " would train as a class of its own).
    """
    if value is None:
        if lenient:
            return None
        raise InvalidRecord(MISSING_LABEL, f'no "{RECORD_LABEL_KEY}": feedback needs a label per instance')
    if not isinstance(value, str):
        raise InvalidRecord(INVALID_LABEL, f"label must be a string, got {json_type_name(value)}")
    if not value.strip():
        if lenient:
            return None
        raise InvalidRecord(MISSING_LABEL, "label is empty")
    if not lenient:
        if len(value) > MAX_LABEL_CHARS:
            raise InvalidRecord(INVALID_LABEL, f"label is {len(value)} characters long; at most {MAX_LABEL_CHARS}")
        if value != value.strip():
            raise InvalidRecord(INVALID_LABEL, f"label has leading or trailing whitespace: {value!r}")
    if any(unicodedata.category(ch) in _FORBIDDEN_LABEL_CATEGORIES for ch in value):
        raise InvalidRecord(INVALID_LABEL, f"label contains control or line-separator characters: {value!r}")
    if names_a_class and value == UNKNOWN_LABEL:
        # A class of that name would make predict_label's "no enrolled signer" ambiguous; the export refuses it.
        raise InvalidRecord(INVALID_LABEL, f"{UNKNOWN_LABEL!r} is the open set's answer for no enrolled signer, "
                                           "not a signer's label: name the signer")
    return value


# -- TF Serving's request bodies ------------------------------------------------------------------------

INSTANCES_KEY = "instances"
"""Row format: a list with one entry per instance (an object of named inputs, or a bare value)."""
INPUTS_KEY = "inputs"
"""Columnar format: an object of named inputs, each a list with one entry per instance."""
SIGNATURE_NAME_KEY = "signature_name"
"""The request body's signature choice (absent: serving_default)."""


def columns_to_rows(inputs: Any) -> list[dict]:
    """Columnar "inputs" ({"name": [v0, v1, ...], ...}) as row "instances" ([{"name": v0, ...}, ...]).

    Raises InvalidRecord(INVALID_COLUMNS) unless `inputs` is a non-empty object
    whose values are lists of one length.
    """
    if not isinstance(inputs, dict) or not inputs:
        raise InvalidRecord(
            INVALID_COLUMNS, f"'{INPUTS_KEY}' must be an object of columns, got {json_type_name(inputs)}")
    lengths = {name: len(column) if isinstance(column, list) else None for name, column in inputs.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise InvalidRecord(
            INVALID_COLUMNS, f"Every column of '{INPUTS_KEY}' must be a list of the same length: {lengths}")
    size = next(iter(lengths.values()))
    return [{name: column[i] for name, column in inputs.items()} for i in range(size)]


# -- durable files -------------------------------------------------------------------------------------------

def fsync_dir(path: str | os.PathLike) -> None:
    """Make a new entry or a rename in folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike, data: bytes | str, *, exclusive: bool = False) -> None:
    """Write `data` (str as UTF-8) to `path` and fsync it; with `exclusive`, only if `path` does not exist yet
    (FileExistsError otherwise: O_EXCL makes creating the file a reservation of its name).

    The folder's entry is not synced: call fsync_dir, or use write_atomic.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Create or replace `path` with `data` (str as UTF-8) so that readers see the old file or the whole new one,
    also after a crash or a power cut.

    The data goes to a hidden temporary file beside `path` (`.<name>.<random>.tmp`:
    ingestion skips dotfiles and *.tmp, TF Serving skips names that are not numbers),
    is fsynced, renamed over `path`, then the folder is fsynced so the rename lasts.
    The folder must exist. On any error the temporary file is removed and the
    error raised.
    """
    folder, name = os.path.split(os.fspath(path))
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        write_synced(temporary, data, exclusive=True)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    fsync_dir(folder or ".")


# -- calling a SavedModel ------------------------------------------------------------------------------------

def call_signature(function: Callable, inputs: Mapping[str, Any],
                   dtypes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Call a restored SavedModel signature (`tf.saved_model.load(path).signatures[name]`) on named arrays.

    Each input becomes a tensor of `dtypes[name]` (a DataType enum value, as in a
    SignatureDef) when given, else of the type its values have. The outputs come
    back as numpy arrays by name. TensorFlow's errors pass through unchanged:
    tf.errors.OpError when an op fails (e.g. bytes that do not decode), TypeError or
    ValueError when an input does not bind (unknown name, wrong dtype or rank);
    each caller words them for its own audience.
    """
    # NOTE: imported here: the names above must stay importable without TensorFlow
    # (the server's flag parsing, ingestion's record checks).
    import tensorflow as tf

    feed = {
        name: tf.convert_to_tensor(value, dtype=tf.dtypes.as_dtype(dtypes[name]) if dtypes is not None else None)
        for name, value in inputs.items()
    }
    outputs = function(**feed)
    return {name: value.numpy() for name, value in outputs.items()}
