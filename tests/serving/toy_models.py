"""Tiny SavedModels with TF Serving's test shapes, for the conformance and version tests.

They mirror the models TF Serving's own tests use (half_plus_two with classify and
regress signatures, a multi-input model, a bytes model), plus models that are
slow, gated (run until the test lets them finish), fail at run time, or take a
dtype JSON cannot express. Each saves in well under a second. signflow's real
model comes from tests/fixtures/tiny_model.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.data.experimental.ops import testing as data_testing
from tensorflow.python.saved_model import fingerprinting_utils

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def _set_methods(path: Path, methods: dict[str, str]) -> None:
    """tf.saved_model.save marks every signature predict; TF Serving's classify/regress need their own."""
    graph = path / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(graph.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    graph.write_bytes(saved_model.SerializeToString())
    fingerprinting_utils.write_fingerprint(str(path))


class _HalfPlusTwo(tf.Module):
    """TF Serving's half_plus_two: y = x / 2 + 2, with classify and regress over tf.Examples."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": x / 2.0 + 2.0}

    def _parse(self, inputs):
        return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        return {"scores": self._parse(inputs) / 2.0 + 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._parse(inputs) / 2.0 + 2.0}


def build_half_plus_two(path: Path) -> Path:
    module = _HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.predict,
        "classify_x_to_y": module.classify,
        "regress_x_to_y": module.regress,
    })
    _set_methods(path, {"classify_x_to_y": CLASSIFY_METHOD, "regress_x_to_y": REGRESS_METHOD})
    return path


class _MultiInput(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="a"), tf.TensorSpec([None], tf.string, name="b")])
    def predict(self, a, b):
        return {"o": a * 2 + tf.strings.length(b)}


def build_multi_input(path: Path) -> Path:
    module = _MultiInput()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


class _Bytes(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s_in")])
    def predict(self, s_in):
        return {"out_bytes": tf.identity(s_in)}


def build_bytes_identity(path: Path) -> Path:
    module = _Bytes()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


class _Slow(tf.Module):
    """Sleeps x[0] milliseconds (a tf.data sleep: no CPU burnt), then returns x.

    NOTE: the sleeping op holds one of TensorFlow's inter-op threads, which every
    model in the process shares: keep sleeps short, or other models wait too.
    """

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        micros = tf.cast(x[0] * 1000.0, tf.int64)
        # take(1): the sleep runs before every GetNext, end of sequence included.
        waited = tf.data.Dataset.range(1).apply(data_testing.sleep(micros)).take(1).reduce(
            tf.constant(0, tf.int64), lambda total, item: total + item)
        return {"y": x + tf.cast(waited, tf.float32)}


def build_slow(path: Path) -> Path:
    module = _Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


# The gated model checks for its release file every GATE_POLL_MICROS, and gives up waiting
# after GATE_MAX_POLLS checks (a minute at the very least): a test that fails before
# releasing it must not leave a model call running forever.
GATE_POLL_MICROS = 5_000
GATE_MAX_POLLS = 12_000


class _Gated(tf.Module):
    """Writes the file `started[0]` names, then runs until a file exists at `release[0]`; returns x.

    A request that is provably inside the model for as long as the test wants, with
    no guess at how long anything takes. The waits are tf.data sleeps (see _Slow's NOTE).
    """

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.string, name="started"),
                                  tf.TensorSpec([None], tf.string, name="release")])
    def predict(self, x, started, release):
        with tf.control_dependencies([tf.io.write_file(started[0], "running")]):
            checks = tf.constant(0, tf.int64)

        def waiting(checks):
            released = tf.size(tf.io.matching_files(release[0])) > 0
            return tf.logical_and(checks < GATE_MAX_POLLS, tf.logical_not(released))

        def pause(checks):
            slept = tf.data.Dataset.range(1).apply(data_testing.sleep(GATE_POLL_MICROS)).take(1).reduce(
                tf.constant(0, tf.int64), lambda total, item: total + item)
            return (checks + 1 + slept,)

        (checks,) = tf.while_loop(waiting, pause, (checks,))
        return {"y": x / 2.0 + 2.0, "released": tf.fill(tf.shape(x), checks < GATE_MAX_POLLS)}


def build_gated(path: Path) -> Path:
    module = _Gated()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


class Gate:
    """The two files of one gated request: `started` appears when the model runs, `release()` ends it.

    `request()` is the REST body; `open()` makes a gate whose requests answer at once.
    """

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.started_path = folder / "started"
        self.release_path = folder / "release"

    @classmethod
    def open(cls, folder: Path) -> "Gate":
        gate = cls(folder)
        gate.release()
        return gate

    def started(self) -> bool:
        return self.started_path.exists()

    def released(self) -> bool:
        return self.release_path.exists()

    def release(self) -> None:
        self.release_path.touch()

    def request(self, x: float = 1.0) -> bytes:
        return json.dumps({"instances": [
            {"x": x, "started": str(self.started_path), "release": str(self.release_path)}]}).encode()


class _Broken(tf.Module):
    """Fails inside the graph with an UNKNOWN error (an I/O error reading /proc/self/mem)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        data = tf.io.read_file("/proc/self/mem")
        return {"y": x + tf.cast(tf.strings.length(data), tf.float32)}


def build_broken(path: Path) -> Path:
    module = _Broken()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


class _Half(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float16, name="x")])
    def predict(self, x):
        return {"y": x * 2}


def build_half_precision(path: Path) -> Path:
    module = _Half()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path
