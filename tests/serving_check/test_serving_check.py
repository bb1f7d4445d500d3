"""ServingCheck executor on real artifacts: the model is served in a real child process."""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
from pathlib import Path

import pytest
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.components.util import model_utils
from tfx.types import standard_artifacts

from components.serving_check.checks import check_signature_defs
from components.serving_check.component import Executor, ServingCheck, probe_started_in_advance

pytestmark = pytest.mark.timeout(180)

# Hang guard: how long a killed process group may take to release its files.
EXIT_GUARD_SECONDS = 60

# sitecustomize for the probe: Python imports it at start-up from PYTHONPATH, so
# the probe hangs before it does any work, however fast the machine. It and a
# child of its own (as a tensorflow_model_server the probe started would be)
# hold the write end of the test's FIFO until they die.
HANG_AT_START = """
import os, signal
fifo = os.environ.get("SIGNFLOW_TEST_HANG_FIFO")
if fifo:
    os.open(fifo, os.O_WRONLY)
    os.fork()
    while True:
        signal.pause()
"""


def run_check(candidate, blessing=None, with_model_run=True, **options):
    inputs = {"model": [candidate.model], "examples": candidate.examples}
    if with_model_run:
        inputs["model_run"] = [candidate.model_run]
    if blessing is not None:
        inputs["blessing"] = [blessing]
    Executor().Do(inputs, {"infra_blessing": [candidate.infra_blessing]}, {"server": "saved_model", **options})
    report = json.loads((Path(candidate.infra_blessing.uri) / "serving_check.json").read_text())
    return candidate.infra_blessing, report


def edit_signature_defs(saved_model: Path, edit) -> None:
    """Change the SignatureDefs TF Serving reads from saved_model.pb (the object graph stays as exported)."""
    path = saved_model / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    edit(proto.meta_graphs[0].signature_def)
    path.write_bytes(proto.SerializeToString())
    fingerprinting_utils.write_fingerprint(str(saved_model))


def test_good_model_is_infra_blessed_in_tfx_terms(candidate, eval_images):
    blessing, report = run_check(candidate)

    assert report["problems"] == []
    assert model_utils.is_infra_validated(blessing)
    assert (Path(blessing.uri) / "INFRA_BLESSED").is_file()
    assert not (Path(blessing.uri) / "INFRA_NOT_BLESSED").exists()
    assert blessing.get_string_custom_property("current_model") == candidate.model.uri
    # Both ways a server loads it, every eval image checked against the Trainer's predictions.
    assert report["backends"] == ["tf-serving-session", "tf.saved_model.load"]
    assert report["images"] == report["compared_with_trainer"] == len(eval_images)
    # TFX's own Pusher accepts this InfraBlessing.
    assert tfx_pusher_executor.Executor().CheckBlessing({"infra_blessing": [blessing]})
    assert report["probe_process"]["started_in_advance"] is False


def test_the_probe_started_in_advance_runs_the_check_and_writes_its_log(candidate, eval_images):
    with probe_started_in_advance() as ready:  # as the local runner wraps a run
        blessing, report = run_check(candidate)

    assert report["problems"] == [] and model_utils.is_infra_validated(blessing)
    assert report["images"] == report["compared_with_trainer"] == len(eval_images)
    assert report["probe_process"] == {"pid": ready.pid, "started_in_advance": True}
    assert f"serving check probe, pid {ready.pid}" in (Path(blessing.uri) / "serving_check.log").read_text()
    assert ready.returncode == 0


def test_a_probe_started_in_advance_that_ended_is_replaced(candidate, caplog):
    with probe_started_in_advance() as ready:
        os.killpg(ready.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        ready.wait()
        with caplog.at_level(logging.WARNING):
            blessing, report = run_check(candidate)

    assert report["problems"] == [] and model_utils.is_infra_validated(blessing)
    assert report["probe_process"]["started_in_advance"] is False and report["probe_process"]["pid"] != ready.pid
    assert (f"the serving check's probe started in advance (pid {ready.pid}) had ended (exit code "
            f"{-signal.SIGKILL}): starting a new one") in caplog.text


def test_a_probe_started_in_advance_and_not_needed_ends_with_the_run():
    with probe_started_in_advance() as ready:
        assert ready.poll() is None
    assert ready.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(ready.pid, 0)  # nothing is left in its process group


def test_broken_serving_signature_is_not_blessed(candidate, caplog):
    def rename_probabilities(signatures):
        outputs = signatures["serving_default"].outputs
        outputs["logits"].CopyFrom(outputs["probabilities"])
        del outputs["probabilities"]

    edit_signature_defs(candidate.saved_model, rename_probabilities)
    with caplog.at_level(logging.WARNING):
        blessing, report = run_check(candidate)

    assert not model_utils.is_infra_validated(blessing)
    assert (Path(blessing.uri) / "INFRA_NOT_BLESSED").is_file()
    assert any("'probabilities'" in problem for problem in report["problems"])
    # TF Serving (SignatureDef) breaks; tf.saved_model.load (object graph) does not: the check catches the first.
    assert any(problem.startswith("tf-serving-session ") for problem in report["problems"])
    assert "not blessed:" in caplog.text and "probabilities" in blessing.get_string_custom_property("reason")


def test_signature_defs_are_checked_as_tf_serving_reads_them(tiny_model):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tiny_model / "saved_model.pb").read_bytes())
    signatures = proto.meta_graphs[0].signature_def
    assert check_signature_defs(signatures, num_labels=3) == []

    # TF Serving's Classify API refuses a classify signature saved with the predict method.
    signatures["classify"].method_name = "tensorflow/serving/predict"
    signatures["predict_label"].outputs["score"].dtype = 2  # DT_DOUBLE
    problems = check_signature_defs(signatures, num_labels=4)

    assert any("'classify' has method_name 'tensorflow/serving/predict'" in problem for problem in problems)
    assert any("'predict_label' output 'score' has dtype enum 2" in problem for problem in problems)
    assert any("'serving_default' output 'probabilities' has shape [-1, 3], expected [-1, 4] (labels.txt)" in problem
               for problem in problems)


def test_serving_default_answers_probabilities_only_and_predict_label_exists(tiny_model):
    """Issue 12 item 8: the seed's answer shape. A serving_default with extra outputs (REST would then answer
    {"predictions": [{"probabilities": ...}]}) or a model without predict_label is refused."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tiny_model / "saved_model.pb").read_bytes())
    signatures = proto.meta_graphs[0].signature_def
    assert set(signatures["serving_default"].outputs) == {"probabilities"}
    assert set(signatures["predict_label"].outputs) == {"label", "score", "probabilities"}

    signatures["serving_default"].outputs["label"].CopyFrom(signatures["predict_label"].outputs["label"])
    del signatures["predict_label"]
    problems = check_signature_defs(signatures, num_labels=3)

    assert any("signature 'serving_default' outputs are ['label', 'probabilities'], the contract says ['probabilities']"
               in problem for problem in problems)
    assert any("signature 'predict_label' missing" in problem for problem in problems)


def test_disagreeing_with_trainer_predictions_is_not_blessed(candidate, trainer_predictions):
    labels = sorted({line["predicted"] for line in trainer_predictions} | {"signer_00", "signer_01", "signer_02"})
    wrong = [dict(line, predicted=labels[(labels.index(line["predicted"]) + 1) % len(labels)]) for line in trainer_predictions]
    candidate.write_eval_predictions(wrong)

    blessing, report = run_check(candidate)

    assert not model_utils.is_infra_validated(blessing)
    assert any("the Trainer predicted" in problem for problem in report["problems"])


def test_model_whose_variables_do_not_restore_is_not_blessed(candidate):
    data = next((candidate.saved_model / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:16])

    blessing, report = run_check(candidate)

    assert not model_utils.is_infra_validated(blessing)
    assert any("failed to load" in problem for problem in report["problems"])


def wait_for_every_writer_to_exit(fifo_reader: int, guard_seconds: float) -> bool:
    """Block until no process holds the FIFO open for writing (True), or the guard runs out (False)."""
    while True:
        try:
            if not os.read(fifo_reader, 4096):
                return True  # end of file: no writer is left
        except BlockingIOError:
            # A writer is still there: wait until it writes or exits.
            ready, _, _ = select.select([fifo_reader], [], [], guard_seconds)
            if not ready:
                return False


def test_hung_serving_process_is_killed_with_its_children_and_not_blessed(candidate, tmp_path, monkeypatch):
    hook = tmp_path / "hang_at_start"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_AT_START)
    fifo = tmp_path / "held_by_the_probe"
    os.mkfifo(fifo)
    # Opened first, so the probe's open for writing never waits for a reader.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SIGNFLOW_TEST_HANG_FIFO", str(fifo))
    try:
        blessing, report = run_check(candidate, timeout_seconds=1)
        every_holder_exited = wait_for_every_writer_to_exit(reader, EXIT_GUARD_SECONDS)
    finally:
        os.close(reader)

    assert not model_utils.is_infra_validated(blessing)
    assert report["problems"] == ["the serving check did not finish within 1s (killed)"]
    assert report["probe_process"]["started_in_advance"] is False  # which process it was, also when it failed
    # The whole process group went, not only the probe.
    assert every_holder_exited, f"a process of the killed serving check still held {fifo} after {EXIT_GUARD_SECONDS}s"


def test_model_not_blessed_by_evaluator_is_not_served(candidate):
    evaluator_blessing = standard_artifacts.ModelBlessing()
    evaluator_blessing.set_int_custom_property("blessed", 0)

    blessing, report = run_check(candidate, blessing=evaluator_blessing)

    assert not model_utils.is_infra_validated(blessing)
    assert report["problems"] == ["skipped: the Evaluator did not bless this model"]
    assert "backends" not in report


def test_missing_trainer_predictions_is_not_blessed(candidate):
    (Path(candidate.model_run.uri) / "eval_predictions.jsonl").unlink()

    blessing, report = run_check(candidate)

    assert not model_utils.is_infra_validated(blessing)
    assert "eval_predictions.jsonl is missing" in report["problems"][0]


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is not None, reason="the binary is installed")
def test_requiring_the_model_server_without_the_binary_is_not_blessed(candidate):
    blessing, report = run_check(candidate, server="tensorflow_model_server")

    assert not model_utils.is_infra_validated(blessing)
    assert "no tensorflow_model_server on PATH" in report["problems"][0]


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server not on PATH: install TF Serving's binary to run it")
def test_good_model_is_infra_blessed_by_the_real_model_server(candidate):
    blessing, report = run_check(candidate, server="tensorflow_model_server")

    assert report["problems"] == []
    assert report["backends"] == ["tensorflow_model_server"]
    assert model_utils.is_infra_validated(blessing)


def test_component_rejects_an_unknown_server_option():
    from tfx.types import channel_utils

    with pytest.raises(ValueError, match="server must be"):
        ServingCheck(
            model=channel_utils.as_channel([standard_artifacts.Model()]),
            examples=channel_utils.as_channel([standard_artifacts.Examples()]),
            server="docker",
        )
