"""The real Pusher executor with the model, the serving folder and the PushedModel on ram://.

ram://, like gs:// and s3://, cannot rename a folder in one step, so this is the
object-store publish: staged upload, copy with saved_model.pb last, a log line
that says so; and what is pushed there loads from there.
"""
from __future__ import annotations

import logging
import socket
import subprocess
import sys

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tfx.types import standard_artifacts

from components import storage
from components.pusher import publish, records
from components.pusher.component import Executor
from components.pusher.records import PushRecord
from tests.fileio.ram import ram_root, tree, upload


def _blessing(kind, model):
    artifact = kind()
    artifact.uri = f"{model.uri}-{kind.TYPE_NAME}"
    artifact.set_int_custom_property("blessed", 1)
    artifact.set_string_custom_property("current_model", model.uri)
    return artifact


def _push(root: str, tiny_model, number: int) -> standard_artifacts.PushedModel:
    model = standard_artifacts.Model()
    model.uri = f"{root}/Trainer/model/{number}"
    upload(tiny_model, f"{model.uri}/Format-Serving")
    pushed = standard_artifacts.PushedModel()
    pushed.uri = f"{root}/Pusher/pushed_model/{number}"
    inputs = {
        "model": [model],
        "model_blessing": [_blessing(standard_artifacts.ModelBlessing, model)],
        "infra_blessing": [_blessing(standard_artifacts.InfraBlessing, model)],
    }
    Executor().Do(inputs, {"pushed_model": [pushed]}, {"serving_dir": f"{root}/serving", "keep_versions": 1})
    return pushed


def test_push_to_an_object_store_copies_saved_model_last_and_serves_from_there(tiny_model, caplog):
    root = ram_root("pusher")
    base = f"{root}/serving/xception"
    with caplog.at_level(logging.INFO):
        first = _push(root, tiny_model, 1)
        second = _push(root, tiny_model, 2)

    versions = publish.list_versions(base)
    assert len(versions) == 1  # keep_versions=1: retention removed the first
    [version] = versions
    assert second.get_string_custom_property("pushed_destination") == f"{base}/{version}"
    assert tree(f"{base}/{version}") == tree(str(tiny_model))
    assert [name for name in storage.listdir(base) if not name.isdigit()] == [".pushes"]  # no staging left
    assert any("cannot rename a folder in one step" in message for message in caplog.messages)
    # The reading side: the version loads from ram://, and its records read back.
    loaded = tf.saved_model.load(f"{base}/{version}")
    assert set(loaded.signatures) == {"serving_default", "predict_label", "classify"}
    first_version = int(first.get_string_custom_property("pushed_version"))
    assert records.read_record(base, first_version).removed_at is not None
    assert records.read_record(base, version).state == records.LIVE
    assert PushRecord.from_json(storage.read_text(f"{second.uri}/push.json")).version == version
    config = text_format.Parse(storage.read_text(f"{root}/serving/models.config"),
                               model_server_config_pb2.ModelServerConfig())
    assert [entry.base_path for entry in config.model_config_list.config] == [base]


def test_a_version_left_without_saved_model_by_a_dead_push_is_removed_not_adopted(tiny_model):
    base = f"{ram_root('pusher-crash')}/serving/xception"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = PushRecord(500, "xception", "model-of-a-dead-push", pid=int(dead.stdout), host=socket.gethostname())
    records.create_record_exclusively(base, record)
    # What a push that died mid-copy leaves on an object store: a numbered folder without saved_model.pb.
    upload(tiny_model, f"{base}/500")
    storage.remove(f"{base}/500/saved_model.pb")

    result = publish.push_model(tiny_model, base, PushRecord(0, "xception", "next-model"), clock=lambda: 400.0)

    assert (result.adopted, result.version) == ([], 501)
    assert publish.list_versions(base) == [501]
    assert records.read_record(base, 500).state == records.FAILED
