"""The two servers together, for real: the training server retrains from feedback, the serving server swaps versions
under load, a rollback swaps back, and a bad candidate is not pushed. Zero failed requests throughout.

One story (module fixture), told at a small size (3 signers, 71x142 images, a few training steps):

1. The serving server starts on loopback with nothing to serve; the training server
   (`signflow schedule`, a separate process) runs its first cycle on the sample and
   pushes V1. Concurrent REST and gRPC clients start and run to the end.
2. New labelled images arrive through the serving server's feedback endpoint; the
   training server notices them and pushes V2, which the serving server loads beside
   V1 and switches to.
3. V2 is rolled back by its version folder: the serving server goes back to V1.
4. Images with deliberately wrong labels arrive through feedback; a cycle with the
   production-like bar trains on them and is not blessed: nothing is pushed, V1 serves on.

Every response names the version that answered (REST header, gRPC model_spec), and
its probabilities must equal what that version's SavedModel computes for the probe
image: a response cannot claim one version and come from another.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import requests

from components.trainer.config import TrainerConfig
from pipeline.training_server.schedule import STOP_GRACE_SECONDS, read_status
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE, list_versions
from serving.server import ServerThread
from tests.serving.conftest import make_settings, wait_for, wait_for_polls

# The story runs once, in the first test's setup, so that test's timeout covers three training
# cycles (each bounded by CYCLE_TIMEOUT) plus the swaps between them; a step that times out
# ends the story with its own message long before this does.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(3 * 600 + 600)]

REPO = Path(__file__).resolve().parents[2]
MODEL = "xception"
SIGNERS = 3
PER_SIGNER = 14
# Feedback records that make the training server start a cycle.
MIN_NEW_RECORDS = 12
TOKEN = "e2e-feedback-token"
CYCLE_TIMEOUT = 600  # seconds for one training cycle to show up on the serving side (2 loaded cores)
# Seconds for the server to load a version and answer with it, beside the load clients and the
# other worker's tests (an Xception version loads in 10-19 s on 2 idle cores).
LOAD_TIMEOUT = 180
TINY_TRAINER = TrainerConfig(
    image_height=71, image_width=142, batch_size=8,
    scratch_epochs=2, warmup_epochs=1, steps_per_epoch=2, bn_recalibration_batches=1,
    head_epochs=1, fine_tune_epochs=1, shuffle_buffer=64, weights="none",
)
# Plumbing bar for the training server's cycles: at this size accuracy is near chance.
OPEN_GATE = {"min_accuracy": 0.0, "min_signer_accuracy": 0.0, "max_accuracy_drop": 1.0}
# The production-like bar used for the wrong-labels cycle: the gate, not the plumbing, must stop it.
STRICT_GATE = {"min_accuracy": 0.75, "min_signer_accuracy": 0.5}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_signatures", REPO / "data" / "generate_signatures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
PROBE = GEN.render_signature(seed=11, signer=1, sample=500)


@dataclass
class Response:
    transport: str
    started: float
    finished: float
    version: int | None
    probabilities: list[float] | None
    error: str | None = None


class Load:
    """Clients that predict the probe image over REST and gRPC until stopped, recording every answer."""

    def __init__(self, server: ServerThread, clients_per_transport: int = 2, pause: float = 0.2):
        self.server = server
        self.pause = pause
        self.responses: list[Response] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rest, daemon=True) for _ in range(clients_per_transport)]
        self._threads += [threading.Thread(target=self._grpc, daemon=True) for _ in range(clients_per_transport)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=60)

    def _record(self, response: Response) -> None:
        with self._lock:
            self.responses.append(response)

    def _rest(self) -> None:
        url = f"{self.server.rest_url}/v1/models/{MODEL}:predict"
        body = {"instances": [{"image_bytes": {"b64": base64.b64encode(PROBE).decode()}}]}
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.time()
                try:
                    answer = session.post(url, json=body, timeout=30)
                    if answer.status_code != 200:
                        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
                    self._record(Response("REST", started, time.time(), int(answer.headers["X-Model-Version"]),
                                          answer.json()["predictions"][0]))
                except Exception as err:  # every failure is recorded; the test asserts there are none
                    self._record(Response("REST", started, time.time(), None, None, repr(err)))
                self._stop.wait(self.pause)

    def _grpc(self) -> None:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([PROBE], dtype=tf.string))
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                started = time.time()
                try:
                    answer = stub.Predict(request, timeout=30)
                    probabilities = tf.make_ndarray(answer.outputs["probabilities"])[0].tolist()
                    self._record(Response("gRPC", started, time.time(), answer.model_spec.version.value,
                                          probabilities))
                except Exception as err:
                    self._record(Response("gRPC", started, time.time(), None, None, repr(err)))
                self._stop.wait(self.pause)

    def versions_since(self, moment: float) -> set[int | None]:
        with self._lock:
            return {r.version for r in self.responses if r.started >= moment}


@dataclass
class Story:
    root: Path
    config_file: Path
    metadata_path: Path
    model_base_path: Path
    v1: int = 0
    v2: int = 0
    expected: dict[int, np.ndarray] = field(default_factory=dict)  # version -> probe probabilities
    responses: list[Response] = field(default_factory=list)
    v2_pushed_at: float = 0.0
    v2_seen_at: float = 0.0
    rollback_at: float = 0.0
    rollback_done_at: float = 0.0
    feedback_answers: list[dict] = field(default_factory=list)
    schedule_status: dict = field(default_factory=dict)
    status_route: dict = field(default_factory=dict)
    schedule_log: str = ""
    bad_cycle: dict = field(default_factory=dict)
    bad_cycle_log: str = ""
    serving_digest_before_bad_cycle: dict = field(default_factory=dict)
    serving_digest_after_bad_cycle: dict = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    failed: tuple[str, str] | None = None  # (step, error)

    def run(self, steps: list[tuple[str, Callable[[], None]]]) -> None:
        """Run the steps in order; the first that fails is recorded with its error and ends the story."""
        for name, step in steps:
            try:
                step()
            except Exception:
                self.failed = (name, traceback.format_exc(limit=4))
                return
            self.completed.append(name)

    def needs(self, *steps: str) -> None:
        """Skip a check whose steps did not all complete: test_story_step reports the step that failed."""
        missing = [name for name in steps if name not in self.completed]
        if missing:
            failed = self.failed[0] if self.failed else "?"
            pytest.skip(f"needs step '{missing[0]}', not completed: step '{failed}' failed (see test_story_step)")


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _signflow(*args: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_USE_LEGACY_KERAS": "1"}
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _probe_probabilities(version_dir: Path) -> np.ndarray:
    import tensorflow as tf

    model = tf.saved_model.load(str(version_dir))
    return model.signatures["serving_default"](image_bytes=tf.constant([PROBE]))["probabilities"].numpy()[0]


def _feedback(server: ServerThread, items: list[tuple[bytes, str]], extra: list | None = None) -> dict:
    instances = [{"image_bytes": {"b64": base64.b64encode(data).decode()}, "label": label} for data, label in items]
    answer = requests.post(f"{server.rest_url}/v1/models/{MODEL}/feedback", json={"instances": instances + (extra or [])},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _available(server: ServerThread) -> list[int]:
    status = requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=10).json()
    return sorted(int(v["version"]) for v in status.get("model_version_status", []) if v["state"] == "AVAILABLE")


STEPS = ("first cycle pushes V1", "feedback retrains V2", "rollback to V1", "bad cycle is held back")


def _run_story(story: Story, root: Path, status_file: Path) -> None:
    """Tell the story step by step; the first step that fails is recorded with its error and ends it."""
    settings = make_settings(model_name=MODEL, model_base_path=str(story.model_base_path),
                             file_system_poll_wait_seconds=1, feedback_dir=str(root / "inbox" / "feedback"),
                             feedback_token=TOKEN, training_status_file=str(status_file))

    def schedule_log_tail() -> str:
        return (root / "schedule.log").read_text()[-5000:]

    with ServerThread(settings) as server:
        scheduler = _signflow("schedule", "--config", str(story.config_file), "--interval", "1h",
                              "--min-new-records", str(MIN_NEW_RECORDS), "--poll", "1s", "--retry", "5s",
                              "--max-cycles", "2", log_path=root / "schedule.log")
        load = Load(server)

        def first_cycle() -> None:
            assert wait_for(lambda: _available(server) != [], timeout=CYCLE_TIMEOUT, interval=1), \
                schedule_log_tail()
            story.v1 = _available(server)[0]
            story.expected[story.v1] = _probe_probabilities(story.model_base_path / str(story.v1))
            load.start()
            assert wait_for(lambda: len(load.responses) >= 20, timeout=60), "the clients got no answers"

        def feedback_retrains() -> None:
            # Right labels, and one broken instance that is refused with its reason.
            new = [(GEN.render_signature(seed=11, signer=i % SIGNERS, sample=200 + i), GEN.label_for(i % SIGNERS))
                   for i in range(MIN_NEW_RECORDS)]
            broken = [{"image_bytes": {"b64": "not base64!"}, "label": GEN.label_for(0)}]
            story.feedback_answers.append(_feedback(server, new[:6], extra=broken))
            story.feedback_answers.append(_feedback(server, new[6:]))
            assert wait_for(lambda: len(list_versions(story.model_base_path)) == 2, timeout=CYCLE_TIMEOUT,
                            interval=1), schedule_log_tail()
            story.v2_pushed_at = time.time()
            story.v2 = list_versions(story.model_base_path)[-1]
            story.expected[story.v2] = _probe_probabilities(story.model_base_path / str(story.v2))
            assert wait_for(lambda: story.v2 in load.versions_since(story.v2_pushed_at), timeout=LOAD_TIMEOUT), \
                "no client was answered by V2"
            story.v2_seen_at = time.time()
            assert wait_for(lambda: load.versions_since(story.v2_seen_at + 2) == {story.v2}, timeout=LOAD_TIMEOUT), \
                "clients still answered by V1 after the switch"
            assert scheduler.wait(timeout=120) == 0, schedule_log_tail()  # --max-cycles 2
            story.schedule_status = read_status(status_file)
            story.status_route = requests.get(f"{server.rest_url}/signflow/status", timeout=10).json()

        def rollback() -> None:
            from pipeline.training_server.rollback import roll_back

            story.rollback_at = time.time()
            roll_back(story.model_base_path, reason="e2e: rolled back by the test")
            assert wait_for(lambda: _available(server) == [story.v1], timeout=LOAD_TIMEOUT), _available(server)
            story.rollback_done_at = time.time()
            assert wait_for(lambda: load.versions_since(story.rollback_done_at) == {story.v1}, timeout=LOAD_TIMEOUT), \
                "clients still answered by V2 after the rollback"

        def bad_cycle() -> None:
            wrong = [(GEN.render_signature(seed=11, signer=s, sample=300 + n), GEN.label_for((s + 1) % SIGNERS))
                     for s in range(SIGNERS) for n in range(2 * PER_SIGNER)]
            for start in range(0, len(wrong), 28):
                story.feedback_answers.append(_feedback(server, wrong[start:start + 28]))
            story.serving_digest_before_bad_cycle = _tree_digest(story.model_base_path)
            overrides = [a for key, value in STRICT_GATE.items() for a in ("--set", f"gate.{key}={value}")]
            bad = _signflow("schedule", "--once", "--config", str(story.config_file), *overrides,
                            log_path=root / "bad_cycle.log")
            try:
                code = bad.wait(timeout=CYCLE_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = None  # hung: stop it and its cycle, or they load the other worker's tests
                bad.terminate()
                try:
                    bad.wait(timeout=STOP_GRACE_SECONDS + 30)  # it gives its cycle the grace first
                except subprocess.TimeoutExpired:
                    bad.kill()
                    bad.wait()
            assert code == 0, (root / "bad_cycle.log").read_text()[-5000:]
            story.bad_cycle = read_status(status_file)["last_cycle"]
            story.serving_digest_after_bad_cycle = _tree_digest(story.model_base_path)
            # Had anything been pushed, the server would load it at its next look at the folder.
            assert wait_for_polls(server, 2), "the server stopped polling the model folder"

        try:
            story.run(list(zip(STEPS, (first_cycle, feedback_retrains, rollback, bad_cycle))))
        finally:
            load.stop()
            story.responses = list(load.responses)
            if scheduler.poll() is None:
                scheduler.terminate()
                scheduler.wait(timeout=60)
            story.schedule_log = (root / "schedule.log").read_text()
            story.bad_cycle_log = (root / "bad_cycle.log").read_text() if (root / "bad_cycle.log").exists() else ""


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    root = tmp_path_factory.mktemp("e2e")
    GEN.generate(seed=11, signers=SIGNERS, per_signer=PER_SIGNER, out_dir=root / "sample")
    model_base_path = root / "serving_model" / MODEL
    model_base_path.mkdir(parents=True)
    config_file = root / "signflow.json"
    config_file.write_text(json.dumps({
        "pipeline_root": str(root / "pipeline_root"), "inbox_dir": str(root / "inbox"),
        "sample_dir": str(root / "sample"), "serving_dir": str(root / "serving_model"),
        "schema_path": str(REPO / "components/schema/schema.pbtxt"),
        "trainer": TINY_TRAINER.to_dict(), "gate": OPEN_GATE, "delivery": {"check_requests": 8},
    }))
    status_file = root / "pipeline_root" / "signflow" / "schedule" / "status.json"
    story = Story(root, config_file, root / "pipeline_root" / "signflow" / "metadata.sqlite", model_base_path)
    _run_story(story, root, status_file)
    return story


@pytest.mark.parametrize("step", STEPS)
def test_story_step(story, step):
    """One test per step, so a failure names the step that failed; the steps after it were not run."""
    if step in story.completed:
        return
    assert story.failed is not None, f"step '{step}' neither completed nor failed"
    failed, error = story.failed
    if failed == step:
        pytest.fail(f"step '{step}' failed:\n{error}", pytrace=False)
    pytest.skip(f"not run: step '{failed}' failed first")


def test_zero_failed_requests_over_rest_and_grpc(story):
    story.needs(*STEPS)
    failures = [r for r in story.responses if r.error]
    assert not failures, f"{len(failures)} of {len(story.responses)} failed, e.g. {failures[:3]}"
    by_transport = {t: sum(r.transport == t for r in story.responses) for t in ("REST", "gRPC")}
    assert min(by_transport.values()) >= 50, by_transport


def test_every_answer_comes_from_the_version_it_names(story):
    story.needs(*STEPS)
    for response in story.responses:
        assert response.version in story.expected, response
        np.testing.assert_allclose(response.probabilities, story.expected[response.version], atol=1e-5,
                                   err_msg=f"{response.transport} answer says version {response.version}")
    # The versions really differ on the probe, so the check above can tell them apart.
    assert not np.allclose(story.expected[story.v1], story.expected[story.v2], atol=1e-5)


def test_served_version_goes_v1_then_v2_then_back_to_v1(story):
    story.needs(*STEPS[:3])
    assert story.v1 < story.v2
    for transport in ("REST", "gRPC"):
        answers = sorted((r for r in story.responses if r.transport == transport), key=lambda r: r.started)
        # Before V2 existed: V1 only. Once a client has seen V2, no V1 until the rollback.
        assert {r.version for r in answers if r.finished < story.v2_pushed_at} == {story.v1}
        # A request sent after the first V2 answer came back was dispatched after the switch.
        first_v2 = min(r.finished for r in answers if r.version == story.v2)
        between = {r.version for r in answers if r.started > first_v2 and r.finished < story.rollback_at}
        assert between == {story.v2}, transport
        assert {r.version for r in answers if r.started > story.rollback_done_at} == {story.v1}


def test_training_server_was_triggered_by_feedback_and_reported_it(story):
    story.needs(*STEPS[:2])
    answers = story.feedback_answers
    assert answers[0]["accepted"] == 6 and [r["index"] for r in answers[0]["rejected"]] == [6]
    assert answers[0]["rejected"][0]["reason"] == "invalid_base64"
    last = story.schedule_status["last_cycle"]
    assert last["trigger"] == f"{MIN_NEW_RECORDS} new records"
    assert last["result"] == "pushed" and int(last["pushed_version"]) == story.v2
    assert last["ingest"]["examples"] == MIN_NEW_RECORDS and last["ingest"]["quarantined"] == 0
    # New records for known signers on V1's backbone: a fast cycle (a new head on cached embeddings).
    assert last["cycle"]["kind"] == "fast", last["cycle"]
    assert story.schedule_status["cycles"] == {"pushed": 2}
    assert "cycle pushed version" in story.schedule_log
    # The serving server shows the training server's status beside its own versions.
    assert story.status_route["training"]["last_cycle"]["pushed_version"] == last["pushed_version"]
    assert story.status_route["training_status_error"] is None


def test_v1_was_pushed_in_tf_serving_layout(story):
    story.needs(*STEPS[:3])
    rolled_back = story.model_base_path / ".rolled_back"
    assert list_versions(story.model_base_path) == [story.v1]
    assert [p.name for p in rolled_back.iterdir() if p.name.startswith(str(story.v2))]
    version_dir = story.model_base_path / str(story.v1)
    for part in (SAVED_MODEL_FILE, "variables", LABELS_FILE, WARMUP_FILE):
        assert (version_dir / part).exists(), part
    assert (version_dir / LABELS_FILE).read_text().split() == [f"signer_{i:02d}" for i in range(SIGNERS)]
    assert not [p.name for p in story.model_base_path.iterdir() if p.name.startswith(".incoming-")]


def test_wrong_labels_are_not_pushed_and_v1_serves_on(story):
    story.needs(*STEPS)
    bad = story.bad_cycle
    assert bad["result"] == "not_blessed", story.bad_cycle_log[-3000:]
    assert bad["pushed_version"] is None
    assert bad["cycle"]["kind"] == "fast", bad["cycle"]
    assert any("sparse_categorical_accuracy" in reason for reason in bad["not_blessed_reasons"])
    assert bad["ingest"]["examples"] == 2 * PER_SIGNER * SIGNERS
    assert story.serving_digest_after_bad_cycle == story.serving_digest_before_bad_cycle
    assert {r.version for r in story.responses if r.started > story.rollback_done_at} == {story.v1}


def test_cycles_warm_start_from_and_compare_against_what_serves(story):
    """V2 was trained from V1's model; after the rollback, the bad cycle's baseline is V1 again, not V2."""
    story.needs(*STEPS)
    from pipeline.training_server.run_summary import open_store, summarize

    store = open_store(story.metadata_path)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    assert len(runs) == 3
    first, second, third = (summarize(story.metadata_path, run.name) for run in runs)
    v1_model = first.outputs["Trainer.model"][0].uri

    def base_model(summary) -> str:
        report = Path(summary.outputs["Trainer.model_run"][0].uri) / "report" / "summary.json"
        return json.loads(report.read_text())["base_model"]

    assert base_model(first) is None
    assert base_model(second).startswith(v1_model)
    assert base_model(third).startswith(v1_model)


def test_a_version_no_run_pushed_has_no_baseline(story):
    """The baseline is what serves: a newer folder this pipeline did not push leaves the candidate without one."""
    story.needs(*STEPS[:3])
    import shutil

    from tfx import types
    from tfx.types import artifact_utils, standard_artifacts

    from components.baseline_resolver import ServingBaselineStrategy
    from pipeline.training_server.run_summary import open_store

    store = open_store(story.metadata_path)

    def candidates(artifact_type) -> list[types.Artifact]:
        found = store.get_artifacts_by_type(artifact_type.TYPE_NAME)
        return [artifact_utils.deserialize_artifact(store.get_artifact_types_by_id([a.type_id])[0], a) for a in found]

    inputs = {"model": candidates(standard_artifacts.Model), "pushed_model": candidates(standard_artifacts.PushedModel)}
    strategy = ServingBaselineStrategy(model_base_path=str(story.model_base_path))
    assert len(strategy.resolve_artifacts(store, inputs)["model"]) == 1
    foreign = story.model_base_path / str(story.v1 + 10)
    shutil.copytree(story.model_base_path / str(story.v1), foreign)
    try:
        assert strategy.resolve_artifacts(store, inputs)["model"] == []
    finally:
        shutil.rmtree(foreign)
