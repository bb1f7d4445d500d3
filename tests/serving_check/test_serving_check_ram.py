"""The serving check with its InfraBlessing on ram://, and the probe reading a model and eval split from ram://."""
from __future__ import annotations

import json
import tempfile

from tfx.components.util import model_utils

from components import storage
from components.serving_check.probe import IN_PROCESS, ProbeRequest, run_probe
from tests.fileio.ram import ram_root, upload


def test_the_infra_blessing_is_written_to_ram(candidate):
    root = ram_root("serving-check")
    candidate.infra_blessing.uri = f"{root}/infra_blessing"

    blessing, report = run_check_on(candidate)

    assert model_utils.is_infra_validated(blessing), report["problems"]
    assert storage.exists(f"{root}/infra_blessing/INFRA_BLESSED")
    assert storage.exists(f"{root}/infra_blessing/serving_check.log")  # copied from the probe's local folder


def run_check_on(candidate):
    # run_check reads the report with pathlib; here it is read back through tf.io.
    from components.serving_check.component import Executor

    inputs = {"model": [candidate.model], "examples": candidate.examples, "model_run": [candidate.model_run]}
    Executor().Do(inputs, {"infra_blessing": [candidate.infra_blessing]}, {"server": "saved_model"})
    return candidate.infra_blessing, json.loads(storage.read_text(f"{candidate.infra_blessing.uri}/serving_check.json"))


def test_the_probe_reads_the_model_and_the_eval_split_from_ram(candidate):
    root = ram_root("probe")
    model = upload(candidate.saved_model, f"{root}/model")
    split = upload(f"{candidate.examples[1].uri}/Split-eval", f"{root}/Split-eval")
    with tempfile.TemporaryDirectory() as workdir:
        result = run_probe(ProbeRequest(
            model_path=model,
            example_files=[f"{split}/{name}" for name in storage.listdir(split)],
            num_examples=3,
            max_loading_seconds=120,
            score_tolerance=1e-4,
            server=IN_PROCESS,
            workdir=workdir,
        ))
    assert result.problems == []
    assert result.images == 3 and len(result.backends) == 2
