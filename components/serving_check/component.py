"""ServingCheck: TFX's InfraValidator for a machine without Docker or Kubernetes.

After the Trainer and beside the Evaluator (it waits for the gate's verdict only
when given it), before the Pusher. The executor starts a separate process
(components.serving_check.probe) that loads the candidate SavedModel as TF
Serving does (or runs a real `tensorflow_model_server` when one is on PATH),
replays the model's own warmup requests, sends base64 requests built from eval
images and classify requests, checks every answer against the serving contract,
and compares the predictions with the Trainer's eval_predictions.jsonl. The
output is a standard InfraBlessing, so TFX's Pusher and signflow's accept it:

    custom properties  blessed (1/0), current_model, current_model_id, reason
    files              INFRA_BLESSED or INFRA_NOT_BLESSED, serving_check.json, serving_check.log

Artifacts are read and written through components.storage (tf.io.gfile),
so they may be on gs:// or s3://. The probe process reads the model, the eval
split and the Trainer's predictions where they are (TensorFlow's filesystems
work in any process); only its request, result and log live in a local
temporary folder, and the log is copied into the InfraBlessing afterwards.
The local runner starts the probe's process as a run begins
(`probe_started_in_advance`), so that its TensorFlow import is done by the time
the check is due; without one (Kubeflow, tests) the executor starts it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from absl import logging
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import path_utils

from components import storage, waiting_process
from components.serving_check.checks import SKIPPED_NOT_BLESSED
from components.serving_check.probe import IN_PROCESS, MODEL_SERVER, ProbeRequest
from components.trainer.predictions import EVAL_PREDICTIONS_FILE

MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
BLESSING_KEY = "blessing"
MODEL_RUN_KEY = "model_run"
INFRA_BLESSING_KEY = "infra_blessing"

REPORT_FILE = "serving_check.json"
LOG_FILE = "serving_check.log"
# TFX's InfraValidator marker files and property.
BLESSED_FILE = "INFRA_BLESSED"
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
BLESSED_KEY = "blessed"
REASON_KEY = "reason"
AUTO = "auto"
MODEL_SERVER_BINARY = "tensorflow_model_server"
# Problems named in the one-line reason; all of them are in serving_check.json.
REASON_PROBLEMS = 3

_DEFAULTS = {
    "eval_split": "eval",
    "num_examples": 8,
    "max_loading_seconds": 120,
    "timeout_seconds": 600,
    "score_tolerance": 1e-4,
    "server": AUTO,
}


class ServingCheckSpec(types.ComponentSpec):
    PARAMETERS = {
        "eval_split": ExecutionParameter(type=str, optional=True),
        "num_examples": ExecutionParameter(type=int, optional=True),
        "max_loading_seconds": ExecutionParameter(type=int, optional=True),
        "timeout_seconds": ExecutionParameter(type=int, optional=True),
        "score_tolerance": ExecutionParameter(type=float, optional=True),
        "server": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        MODEL_RUN_KEY: ChannelParameter(type=standard_artifacts.ModelRun, optional=True),
    }
    OUTPUTS = {
        INFRA_BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
    }


class Executor(base_executor.BaseExecutor):
    """Runs the probe in a child process and turns its findings into an InfraBlessing."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        """Infra-bless `model` if it serves the eval images correctly; see the module docstring."""
        self._log_startup(input_dict, output_dict, exec_properties)
        options = {key: exec_properties.get(key) if exec_properties.get(key) is not None else default
                   for key, default in _DEFAULTS.items()}
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        infra_blessing = artifact_utils.get_single_instance(output_dict[INFRA_BLESSING_KEY])
        infra_blessing.set_string_custom_property("current_model", model.uri)
        infra_blessing.set_int_custom_property("current_model_id", model.id or 0)

        blessing = input_dict.get(BLESSING_KEY)
        if blessing and not model_utils.is_model_blessed(artifact_utils.get_single_instance(blessing)):
            # Serving a model that will not be pushed anyway would only cost time.
            _mark(infra_blessing, [SKIPPED_NOT_BLESSED], {})
            return

        problems = []
        eval_predictions = None
        model_run = input_dict.get(MODEL_RUN_KEY)
        if model_run:
            run_uri = artifact_utils.get_single_uri(model_run)
            eval_predictions = storage.join(run_uri, EVAL_PREDICTIONS_FILE)
            if not storage.exists(eval_predictions):
                problems.append(f"the Trainer's {EVAL_PREDICTIONS_FILE} is missing from {run_uri}")
        # Several Examples artifacts when the Trainer reads a window of spans.
        split_dirs = artifact_utils.get_split_uris(input_dict[EXAMPLES_KEY], options["eval_split"])
        example_files = sorted(
            path for folder in split_dirs for path in (storage.join(folder, name) for name in storage.listdir(folder))
            if not storage.isdir(path))
        if not example_files:
            problems.append(f"no {options['eval_split']!r} split files under {', '.join(split_dirs)}")
        server, binary = _choose_server(options["server"])
        if server is None:
            problems.append(f"server={options['server']!r} but no {MODEL_SERVER_BINARY} on PATH")
        if problems:
            _mark(infra_blessing, problems, {})
            return

        workdir = Path(tempfile.mkdtemp(prefix="serving-check-", dir=self._get_tmp_dir() if self._context else None))
        try:
            if eval_predictions:
                # A local copy: the Trainer's reader (components.trainer.predictions) opens local files only.
                local_predictions = str(workdir / EVAL_PREDICTIONS_FILE)
                storage.copy_file(eval_predictions, local_predictions)
                eval_predictions = local_predictions
            request = ProbeRequest(
                model_path=path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)),
                example_files=example_files,
                num_examples=int(options["num_examples"]),
                max_loading_seconds=float(options["max_loading_seconds"]),
                score_tolerance=float(options["score_tolerance"]),
                server=server,
                workdir=str(workdir),
                eval_predictions=eval_predictions,
                model_server_binary=binary,
            )
            report = run_probe_process(request, workdir, workdir / LOG_FILE, int(options["timeout_seconds"]))
            # Copied even when the probe failed: the log is what explains it.
            storage.makedirs(infra_blessing.uri)
            storage.copy_file(str(workdir / LOG_FILE), storage.join(infra_blessing.uri, LOG_FILE))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        _mark(infra_blessing, report.pop("problems"), report)


# A probe process started before the pipeline ran (probe_started_in_advance), for this process's next check.
_ready_probe: subprocess.Popen | None = None


@contextlib.contextmanager
def probe_started_in_advance() -> Iterator[subprocess.Popen | None]:
    """While the block runs, a probe process waits with TensorFlow loaded; a serving check in it uses that process.

    The local runner wraps a whole run in this: importing TensorFlow is ~5.5 s of
    every check on 2 cores, and the first components (ingestion, StatisticsGen)
    leave a core free to do it. On exit a probe that was not used is ended.
    """
    global _ready_probe
    command, env, root = _probe_command("--wait")
    try:
        process = waiting_process.start(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                        cwd=root)
    except OSError as err:  # the check will start its own process (and report why that fails, if it does)
        logging.warning("could not start the serving check's probe in advance: %s", err)
        yield None
        return
    _ready_probe = process
    try:
        yield process
    finally:
        _ready_probe = None
        waiting_process.discard(process)


def run_probe_process(request: ProbeRequest, workdir: Path, log_path: Path, timeout_seconds: int) -> dict[str, Any]:
    """Run the probe in its own process (and process group) with a hard deadline; returns its result.

    The process started in advance when there is one and it is alive, else a new
    one. `workdir` and `log_path` are local (the process writes there through
    the OS). A probe that crashes or overruns yields a result with that as its
    problem. The whole group is killed on timeout, so a tensorflow_model_server
    the probe started goes with it.
    """
    global _ready_probe
    request_path = workdir / "request.json"
    result_path = workdir / "result.json"
    request_path.write_text(json.dumps(asdict(request)), encoding="utf-8")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ready, _ready_probe = _ready_probe, None
    job = {"request": str(request_path), "result": str(result_path), "log": str(log_path)}
    # Opened (emptied) before the hand-over: the waiting probe appends to it from then on.
    with open(log_path, "wb") as log:
        if ready is not None and waiting_process.hand_over(ready, job, "the serving check's probe"):
            process = ready
        else:
            command, env, root = _probe_command(str(request_path), str(result_path))
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                       start_new_session=True)
        probe = {"probe_process": {"pid": process.pid, "started_in_advance": process is ready}}
        try:
            code = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"problems": [f"the serving check did not finish within {timeout_seconds}s (killed)"], **probe}
    if code != 0 or not result_path.is_file():
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        return {"problems": [f"the serving process died (exit code {code}): {tail}"], **probe}
    return {**json.loads(result_path.read_text(encoding="utf-8")), **probe}


def _probe_command(*args: str) -> tuple[list[str], dict[str, str], str]:
    """The probe's command line, environment and working directory (this checkout, importable)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return [sys.executable, "-m", "components.serving_check.probe", *args], env, root


def _choose_server(option: str) -> tuple[str | None, str | None]:
    """(server kind, binary path) for the `server` option; (None, None) if the binary is required but absent."""
    binary = shutil.which(MODEL_SERVER_BINARY)
    if option == IN_PROCESS:
        return IN_PROCESS, None
    if option == MODEL_SERVER:
        return (MODEL_SERVER, binary) if binary else (None, None)
    if option != AUTO:
        raise ValueError(f"server must be {AUTO!r}, {IN_PROCESS!r} or {MODEL_SERVER!r}, got {option!r}")
    return (MODEL_SERVER, binary) if binary else (IN_PROCESS, None)


def _mark(infra_blessing: types.Artifact, problems: list[str], report: dict[str, Any]) -> None:
    """Write TFX's marker file and properties, the full report, and the one log line that explains it."""
    blessed = not problems
    uri = infra_blessing.uri
    storage.write_atomic(storage.join(uri, REPORT_FILE), json.dumps({"blessed": blessed, "problems": problems, **report}, indent=2))
    # The marker last: a reader that finds it finds the report too.
    storage.write_atomic(storage.join(uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "")
    infra_blessing.set_int_custom_property(BLESSED_KEY, 1 if blessed else 0)
    if blessed:
        infra_blessing.set_string_custom_property(REASON_KEY, "")
        logging.info("ServingCheck: infra-blessed (%s; %d requests, %d images, %d compared with the Trainer; load %s).",
                     ", ".join(report.get("backends", [])), report.get("requests", 0), report.get("images", 0),
                     report.get("compared_with_trainer", 0), report.get("load_seconds", {}))
        return
    reason = "; ".join(problems[:REASON_PROBLEMS])
    if len(problems) > REASON_PROBLEMS:
        reason += f" (+{len(problems) - REASON_PROBLEMS} more in {storage.join(uri, REPORT_FILE)})"
    infra_blessing.set_string_custom_property(REASON_KEY, reason)
    logging.warning("ServingCheck: not blessed: %s", reason)


class ServingCheck(base_component.BaseComponent):
    """Infra-validates a model by serving it in a separate process; outputs an InfraBlessing.

    Example:
        serving_check = ServingCheck(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            blessing=evaluator.outputs["blessing"],
            model_run=trainer.outputs["model_run"],
        )
        pusher = Pusher(..., infra_blessing=serving_check.outputs["infra_blessing"])
    """

    SPEC_CLASS = ServingCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel,
        blessing: types.BaseChannel | None = None,
        model_run: types.BaseChannel | None = None,
        eval_split: str = _DEFAULTS["eval_split"],
        num_examples: int = _DEFAULTS["num_examples"],
        max_loading_seconds: int = _DEFAULTS["max_loading_seconds"],
        timeout_seconds: int = _DEFAULTS["timeout_seconds"],
        score_tolerance: float = _DEFAULTS["score_tolerance"],
        server: str = _DEFAULTS["server"],
    ):
        """Args:
            model: the Trainer's Model (the SavedModel under <uri>/Format-Serving is checked).
            examples: Examples (one or more spans) whose `eval_split` supplies real images (feature image_raw).
            blessing: the Evaluator's ModelBlessing; a model it did not bless is not served (saves time).
            model_run: the Trainer's ModelRun; its eval_predictions.jsonl must agree with what is served.
            eval_split: split of `examples` to take images from.
            num_examples: images sent to predict_label (in one batch, compared with the Trainer's answers, and one
                alone); the first few also go through serving_default and classify.
            max_loading_seconds: a load slower than this fails the check.
            timeout_seconds: hard limit for the whole check; the serving process is killed past it.
            score_tolerance: largest |served score - Trainer's score| accepted for the same image.
            server: "auto" (tensorflow_model_server if on PATH, else in-process loading), "saved_model"
                (in-process: TF Serving's session loader and tf.saved_model.load) or "tensorflow_model_server".
        """
        _choose_server(server)  # validates the value at pipeline construction
        spec = ServingCheckSpec(
            model=model,
            examples=examples,
            blessing=blessing,
            model_run=model_run,
            eval_split=eval_split,
            num_examples=num_examples,
            max_loading_seconds=max_loading_seconds,
            timeout_seconds=timeout_seconds,
            score_tolerance=score_tolerance,
            server=server,
            infra_blessing=types.Channel(type=standard_artifacts.InfraBlessing),
        )
        super().__init__(spec=spec)
