"""serving.batching: real numpy (and one tf.function) models behind a real Batcher.

No assertion here depends on how fast anything runs. Where a test needs "the batch has
not run yet" or "these requests are queued", a gate holds the model or the test waits
for the batcher's own count (`until`); a batch timeout that must not fire is set far
beyond the hang guard of `run`, so reaching it fails the test instead of passing slowly.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

import numpy as np
import pytest

from serving.batching import BatchingError, BatchingOptions, BatchQueueFull, BatcherClosed, Batcher, BatchStats

pytestmark = pytest.mark.timeout(120)

# How long a whole test coroutine may take before it counts as hung.
HANG_GUARD = 60.0
# A batch timeout that never fires while a test can pass: far beyond HANG_GUARD.
NEVER_MICROS = 600_000_000


def run(coro, timeout: float = HANG_GUARD):
    """Run a coroutine on a fresh loop; a hang fails the test instead of blocking the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition()` holds (bounded by run()'s hang guard)."""
    while not condition():
        await asyncio.sleep(0.001)


class Model:
    """A numpy 'model' with two outputs of different shapes; records every batch it sees."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay = delay
        self.gate = gate
        self.batch_sizes: list[int] = []
        self.gate_opened: list[bool] = []
        """Per gated call: whether the gate opened (False: the call gave up waiting, a hang)."""
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self._lock:
            self.batch_sizes.append(x.shape[0])
        if self.gate is not None:
            opened = self.gate.wait(HANG_GUARD)
            with self._lock:
                self.gate_opened.append(opened)
        if self.delay:
            time.sleep(self.delay)
        return {"y": x * 2.0 + 1.0, "norm": np.linalg.norm(x, axis=1)}


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x * 2.0 + 1.0, "norm": np.linalg.norm(x, axis=1)}


def options(**kwargs) -> BatchingOptions:
    kwargs.setdefault("num_batch_threads", 1)
    return BatchingOptions(**kwargs)


def test_concurrent_requests_become_one_batch():
    rng = np.random.default_rng(0)
    rows = [1, 3, 2, 4, 1, 5]
    requests = [rng.normal(size=(n, 3)).astype(np.float32) for n in rows]
    model = Model()

    async def main():
        # The timeout never fires: answers at all mean the batch ran because it was full.
        batcher = Batcher(model, options(max_batch_size=sum(rows), batch_timeout_micros=NEVER_MICROS))
        results = await asyncio.gather(*(batcher.submit({"x": x}) for x in requests))
        await batcher.close()
        return results

    results = run(main())
    assert model.batch_sizes == [sum(rows)]
    for x, result in zip(requests, results):
        want = expected(x)
        assert result.keys() == want.keys()
        np.testing.assert_allclose(result["y"], want["y"], rtol=1e-6)
        np.testing.assert_allclose(result["norm"], want["norm"], rtol=1e-6)


def test_timeout_flushes_a_partial_batch():
    model = Model()
    timeout_s = 0.2

    async def main():
        batcher = Batcher(model, options(max_batch_size=100, batch_timeout_micros=int(timeout_s * 1e6)))
        start = time.monotonic()
        results = await asyncio.gather(*(batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(3)))
        elapsed = time.monotonic() - start
        await batcher.close()
        return results, elapsed

    results, elapsed = run(main())
    assert model.batch_sizes == [3]
    # Not before the timeout (a lower bound only: a loaded machine makes it later, never earlier).
    assert elapsed >= timeout_s * 0.9
    assert [float(r["y"][0, 0]) for r in results] == [1.0, 3.0, 5.0]


def test_zero_timeout_batches_requests_that_wait_for_a_busy_worker():
    # TF Serving's default timeout is 0: nothing waits on purpose, but requests that
    # arrive while every batch thread is busy are run together when one frees up.
    gate = threading.Event()
    model = Model(gate=gate)

    async def main():
        batcher = Batcher(model, options(max_batch_size=100, batch_timeout_micros=0))
        first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
        await until(lambda: model.batch_sizes == [1])
        rest = [asyncio.ensure_future(batcher.submit({"x": np.ones((2, 2), np.float32)})) for _ in range(4)]
        await until(lambda: batcher.queued_tasks == 4)
        gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    run(main())
    assert model.batch_sizes == [1, 8]
    assert model.gate_opened == [True, True]


def test_an_exception_reaches_every_caller_of_the_batch():
    class Broken(Exception):
        pass

    def run_batch(inputs):
        raise Broken(f"model failed on {inputs['x'].shape[0]} rows")

    async def main():
        batcher = Batcher(run_batch, options(max_batch_size=5, batch_timeout_micros=5_000_000))
        results = await asyncio.gather(
            *(batcher.submit({"x": np.zeros((1, 1))}) for _ in range(5)), return_exceptions=True
        )
        await batcher.close()
        return results

    results = run(main())
    assert all(isinstance(r, Broken) for r in results)
    assert {str(r) for r in results} == {"model failed on 5 rows"}


def test_retry_alone_fails_only_the_task_whose_rows_the_model_refuses():
    class Refused(Exception):
        pass

    calls: list[list[float]] = []

    def run_batch(inputs):
        rows = inputs["x"][:, 0].tolist()
        calls.append(rows)
        if -1.0 in rows:
            raise Refused(f"refused a batch of {len(rows)}")
        return expected(inputs["x"])

    async def main():
        batcher = Batcher(run_batch, options(max_batch_size=4, batch_timeout_micros=NEVER_MICROS),
                          retry_alone=lambda err: isinstance(err, Refused))
        xs = [np.array([[v, 0.5]]) for v in (1.0, -1.0, 2.0, 3.0)]
        results = await asyncio.gather(*(batcher.submit({"x": x}) for x in xs), return_exceptions=True)
        await batcher.close()
        return xs, results

    xs, results = run(main())
    assert isinstance(results[1], Refused) and str(results[1]) == "refused a batch of 1"
    for i in (0, 2, 3):
        np.testing.assert_allclose(results[i]["y"], expected(xs[i])["y"])
    assert calls == [[1.0, -1.0, 2.0, 3.0], [1.0], [-1.0], [2.0], [3.0]]


def test_errors_retry_alone_does_not_accept_still_reach_every_caller():
    def run_batch(inputs):
        raise RuntimeError("model broken")

    async def main():
        batcher = Batcher(run_batch, options(max_batch_size=3, batch_timeout_micros=NEVER_MICROS),
                          retry_alone=lambda err: isinstance(err, ValueError))
        results = await asyncio.gather(*(batcher.submit({"x": np.zeros((1, 1))}) for _ in range(3)),
                                       return_exceptions=True)
        await batcher.close()
        return results

    results = run(main())
    assert [str(r) for r in results] == ["model broken"] * 3


def test_outputs_without_the_batch_dimension_fail_every_caller():
    def run_batch(inputs):
        return {"ok": inputs["x"], "bad": inputs["x"][:1]}

    async def main():
        batcher = Batcher(run_batch, options(max_batch_size=3, batch_timeout_micros=5_000_000))
        results = await asyncio.gather(
            *(batcher.submit({"x": np.zeros((1, 1))}) for _ in range(3)), return_exceptions=True
        )
        await batcher.close()
        return results

    results = run(main())
    assert all(isinstance(r, BatchingError) and r.code == "FAILED_PRECONDITION" for r in results)
    assert "0th dimension does not equal the sum" in str(results[0])


def test_each_caller_gets_its_own_rows_back_across_many_batches():
    rng = np.random.default_rng(1)
    requests = [rng.normal(size=(int(rng.integers(1, 6)), 4)) for _ in range(80)]
    model = Model(delay=0.002)
    stats: list[BatchStats] = []

    async def main():
        batcher = Batcher(
            model,
            options(max_batch_size=16, batch_timeout_micros=1000, num_batch_threads=2, max_enqueued_batches=1000),
            on_batch=stats.append,
        )

        async def client(x, pause):
            await asyncio.sleep(pause)
            return await batcher.submit({"x": x})

        results = await asyncio.gather(*(client(x, float(rng.uniform(0, 0.02))) for x in requests))
        await batcher.close()
        return results

    results = run(main())
    for x, result in zip(requests, results):
        np.testing.assert_allclose(result["y"], expected(x)["y"])
        np.testing.assert_allclose(result["norm"], expected(x)["norm"])
    assert sum(model.batch_sizes) == sum(len(x) for x in requests)
    assert max(model.batch_sizes) <= 16
    assert len(model.batch_sizes) < len(requests)  # some requests really were batched together
    assert sum(s.num_tasks for s in stats) == len(requests)
    assert all(q >= 0 for s in stats for q in s.queuing_seconds)


def test_full_queue_refuses_at_once_with_tf_servings_error():
    gate = threading.Event()
    model = Model(gate=gate)

    async def main():
        batcher = Batcher(model, options(max_batch_size=2, batch_timeout_micros=10_000_000, max_enqueued_batches=2))
        two_rows = {"x": np.ones((2, 1))}
        running = asyncio.ensure_future(batcher.submit(two_rows))  # full batch: runs, then blocks on the gate
        await until(lambda: model.batch_sizes == [2])
        queued = [asyncio.ensure_future(batcher.submit(two_rows)) for _ in range(2)]  # fill the 2 queued batches
        await until(lambda: batcher.queued_tasks == 2)
        with pytest.raises(BatchQueueFull) as refused:
            await batcher.submit(two_rows)
        # Ordering, not speed: refused while the queue was still full, so it did not wait for room.
        still_full = not gate.is_set() and not running.done() and batcher.queued_tasks == 2
        gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()
        return refused.value, still_full

    error, still_full = run(main())
    assert still_full
    assert error.code == "UNAVAILABLE"
    assert str(error) == (
        "The batch scheduling queue to which this task was submitted is full; "
        "currently 2 batches enqueued and max_enqueued_batches is 2"
    )
    assert model.batch_sizes == [2, 2, 2]


def test_a_task_larger_than_max_batch_size_is_invalid():
    async def main():
        batcher = Batcher(Model(), options(max_batch_size=4))
        with pytest.raises(BatchingError) as refused:
            await batcher.submit({"x": np.zeros((5, 1))})
        await batcher.close()
        return refused.value

    error = run(main())
    assert error.code == "INVALID_ARGUMENT"
    assert str(error) == "Task size 5 is larger than maximum input batch size 4"


def test_inconsistent_inputs_are_invalid():
    async def main():
        batcher = Batcher(Model(), options(max_batch_size=4))
        errors = []
        for inputs in ({}, {"x": np.float32(1)}, {"x": np.zeros((2, 1)), "z": np.zeros((3, 1))}):
            with pytest.raises(BatchingError) as refused:
                await batcher.submit(inputs)
            errors.append(refused.value)
        await batcher.close()
        return errors

    errors = run(main())
    assert [e.code for e in errors] == ["INVALID_ARGUMENT"] * 3
    assert "at least one input tensor" in str(errors[0])
    assert "at least one dimension" in str(errors[1])
    assert "equal 0th-dimension size" in str(errors[2])


def test_an_empty_request_is_answered_without_waiting_for_other_traffic():
    model = Model()

    async def main():
        batcher = Batcher(model, options(max_batch_size=8, batch_timeout_micros=120_000_000,
                                         allowed_batch_sizes=(4, 8)))
        result = await batcher.submit({"x": np.zeros((0, 3))})
        await batcher.close()
        return result

    # Far less than the batch timeout: an empty request that waited for one would miss it.
    result = run(main(), timeout=30)
    assert model.batch_sizes == [0]
    assert result["y"].shape == (0, 3) and result["norm"].shape == (0,)


def test_large_batch_splitting_runs_a_big_task_in_pieces():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3))
    model = Model()

    async def main():
        opts = options(
            max_batch_size=10, max_execution_batch_size=4, enable_large_batch_splitting=True, max_enqueued_batches=5
        )
        batcher = Batcher(model, opts)
        result = await batcher.submit({"x": x})
        await batcher.close()
        return result

    result = run(main())
    assert model.batch_sizes == [4, 4, 2]
    np.testing.assert_allclose(result["y"], expected(x)["y"])
    np.testing.assert_allclose(result["norm"], expected(x)["norm"])


def test_splitting_refuses_a_task_beyond_the_queue_capacity():
    async def main():
        opts = options(
            max_batch_size=10, max_execution_batch_size=2, enable_large_batch_splitting=True, max_enqueued_batches=2
        )
        batcher = Batcher(Model(), opts)
        with pytest.raises(BatchQueueFull) as refused:
            await batcher.submit({"x": np.zeros((5, 1))})
        await batcher.close()
        return refused.value

    error = run(main())
    assert str(error).startswith(
        "The batch scheduling queue to which this task was submitted is full; task size is 5 but scheduling capacity is only 4"
    )


def test_batches_are_padded_to_the_next_allowed_size():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2))
    model = Model()
    stats: list[BatchStats] = []

    async def main():
        opts = options(max_batch_size=8, allowed_batch_sizes=(2, 4, 8), batch_timeout_micros=1000)
        batcher = Batcher(model, opts, on_batch=stats.append)
        result = await batcher.submit({"x": x})
        await batcher.close()
        return result

    result = run(main())
    assert model.batch_sizes == [4]
    assert result["y"].shape == (3, 2)
    np.testing.assert_allclose(result["y"], expected(x)["y"])
    assert (stats[0].batch_size, stats[0].padded_size) == (3, 4)


def test_requests_of_different_shapes_go_to_separate_batches():
    model = Model()

    async def main():
        batcher = Batcher(model, options(max_batch_size=8, batch_timeout_micros=50_000))
        narrow, wide = np.ones((2, 2)), np.ones((1, 5))
        results = await asyncio.gather(batcher.submit({"x": narrow}), batcher.submit({"x": wide}))
        await batcher.close()
        return results

    narrow_result, wide_result = run(main())
    assert sorted(model.batch_sizes) == [1, 2]
    assert narrow_result["y"].shape == (2, 2) and wide_result["y"].shape == (1, 5)


def test_variable_width_byte_strings_share_a_batch():
    model_calls = []

    def run_batch(inputs):
        model_calls.append(len(inputs["s"]))
        return {"length": np.array([len(s) for s in inputs["s"]])}

    async def main():
        batcher = Batcher(run_batch, options(max_batch_size=2, batch_timeout_micros=5_000_000))
        results = await asyncio.gather(
            batcher.submit({"s": np.array([b"ab"])}), batcher.submit({"s": np.array([b"abcde"])})
        )
        await batcher.close()
        return results

    results = run(main())
    assert model_calls == [2]
    assert [int(r["length"][0]) for r in results] == [2, 5]


def test_the_event_loop_keeps_running_while_a_batch_runs():
    # The batch cannot finish until a coroutine on the loop opens its gate: if running the
    # batch blocked the loop, the gate would never open and the model would give up waiting.
    gate = threading.Event()
    model = Model(gate=gate)

    async def main():
        batcher = Batcher(model, options(max_batch_size=1))

        async def opener():
            await until(lambda: bool(model.batch_sizes))
            gate.set()

        opening = asyncio.ensure_future(opener())
        result = await batcher.submit({"x": np.ones((1, 1))})
        await opening
        await batcher.close()
        return result

    result = run(main())
    assert model.gate_opened == [True]
    np.testing.assert_allclose(result["y"], [[3.0]])


def test_close_runs_pending_requests_without_waiting_for_the_timeout_then_refuses():
    model = Model()

    async def main():
        # The timeout never fires: close() returning at all means it ran the batch without it.
        batcher = Batcher(model, options(max_batch_size=100, batch_timeout_micros=NEVER_MICROS))
        pending = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i)})) for i in range(3)]
        await until(lambda: batcher.queued_tasks == 3)
        await batcher.close()
        assert all(task.done() for task in pending)
        with pytest.raises(BatcherClosed) as refused:
            await batcher.submit({"x": np.ones((1, 1))})
        return [float(t.result()["y"][0, 0]) for t in pending], refused.value

    values, error = run(main())
    assert values == [1.0, 3.0, 5.0]
    assert model.batch_sizes == [3]
    assert error.code == "UNAVAILABLE"


def test_a_cancelled_request_does_not_disturb_the_others():
    gate = threading.Event()
    model = Model(gate=gate)

    async def main():
        batcher = Batcher(model, options(max_batch_size=10, batch_timeout_micros=0))
        blocker = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
        await until(lambda: model.batch_sizes == [1])
        gone = asyncio.ensure_future(batcher.submit({"x": np.ones((4, 1))}))
        kept = asyncio.ensure_future(batcher.submit({"x": np.full((2, 1), 7.0)}))
        # Both are in the queue (in one batch) before one is cancelled.
        await until(lambda: batcher.queued_tasks == 2)
        gone.cancel()
        gate.set()
        result = await kept
        await blocker
        await batcher.close()
        return result, gone.cancelled()

    result, cancelled = run(main())
    assert cancelled
    np.testing.assert_allclose(result["y"], np.full((2, 1), 15.0))
    assert model.batch_sizes == [1, 2]  # the cancelled request's 4 rows were not run


def test_a_real_tf_function_behind_the_batcher():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def signature(image_bytes):
        return {"length": tf.strings.length(image_bytes), "upper": tf.strings.upper(image_bytes)}

    calls = []

    def run_batch(inputs):
        calls.append(len(inputs["image_bytes"]))
        return {k: v.numpy() for k, v in signature(tf.constant(inputs["image_bytes"])).items()}

    words = [[b"alpha"], [b"be", b"gamma"], [b"d"]]

    async def main():
        batcher = Batcher(run_batch, options(max_batch_size=4, batch_timeout_micros=5_000_000))
        results = await asyncio.gather(*(batcher.submit({"image_bytes": np.array(w, dtype=object)}) for w in words))
        await batcher.close()
        return results

    results = run(main())
    assert calls == [4]
    for w, result in zip(words, results):
        assert result["length"].tolist() == [len(s) for s in w]
        assert result["upper"].tolist() == [s.upper() for s in w]


# -- BatchingParameters text proto ---------------------------------------------------------------


def test_parses_tf_servings_example_batching_config():
    text = (
        "max_batch_size { value: 128 }\n"
        "batch_timeout_micros { value: 0 }\n"
        "max_enqueued_batches { value: 1000000 }\n"
        "num_batch_threads { value: 8 }\n"
    )
    opts = BatchingOptions.from_text_proto(text)
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches, opts.num_batch_threads) == (
        128, 0, 1000000, 8
    )


def test_unset_fields_take_tensorflows_defaults():
    opts = BatchingOptions.from_text_proto("")
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches) == (1000, 0, 10)
    assert opts.num_batch_threads >= 1
    assert opts == BatchingOptions()


def test_parses_every_supported_field():
    opts = BatchingOptions.from_text_proto(
        """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 2500 }
        max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 }
        thread_pool_name { value: "signflow_batch_threads" }
        enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 16 }
        allowed_batch_sizes: 4
        allowed_batch_sizes: [8, 16]
        pad_variable_length_inputs: false
        """
    )
    assert opts == BatchingOptions(
        max_batch_size=64,
        batch_timeout_micros=2500,
        max_enqueued_batches=3,
        num_batch_threads=2,
        thread_pool_name="signflow_batch_threads",
        enable_large_batch_splitting=True,
        max_execution_batch_size=16,
        allowed_batch_sizes=(4, 8, 16),
    )
    assert opts.execution_batch_size == 16


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_batch_size: 128", "wrapper messages"),
        ("max_batch_size { value: 12", "Invalid BatchingParameters text proto"),
        ("max_batch_size { value: -x }", "Invalid BatchingParameters text proto"),
        ("batch_size { value: 1 }", "batch_size"),
        ("not a proto at all", "Invalid BatchingParameters text proto"),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]", "must match max_batch_size"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: [4, 2, 8]", "monotonically increasing"),
        (
            "max_batch_size { value: 4 } max_execution_batch_size { value: 8 } enable_large_batch_splitting { value: true }",
            "greater than or equal to max_execution_batch_size",
        ),
        ("pad_variable_length_inputs: true", "pad_variable_length_inputs is not supported"),
    ],
)
def test_malformed_or_refused_text_raises_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        BatchingOptions.from_text_proto(text)


def test_zero_max_enqueued_batches_means_one_without_splitting():
    # TensorFlow rewrites 0 to 1 (low-QPS models rely on it) but refuses 0 with splitting.
    assert BatchingOptions(max_enqueued_batches=0).queue_capacity == 1
    with pytest.raises(ValueError, match="max_enqueued_batches must be positive"):
        BatchingOptions(max_enqueued_batches=0, enable_large_batch_splitting=True)


# -- behind the real server (conftest's fixtures) --------------------------------------------------


def _batching_server(start_server, model_store, tmp_path, model: str, parameters: str):
    from tests.serving.conftest import install_version, make_settings

    base = tmp_path / model
    install_version(model_store[model], base, 1)
    batching_file = tmp_path / "batching.txt"
    batching_file.write_text(parameters)
    # No REST deadline: a request held in the gated model lasts as long as the test holds it.
    return start_server(make_settings(
        model_name=model, model_base_path=str(base), enable_batching=True,
        batching_parameters_file=str(batching_file), rest_api_timeout_in_ms=0,
    ))


def test_rest_callers_of_a_batching_server_each_get_their_own_answer(start_server, model_store, tmp_path):
    import concurrent.futures

    import requests

    server = _batching_server(start_server, model_store, tmp_path, "half_plus_two",
                              "max_batch_size { value: 8 } batch_timeout_micros { value: 100000 }")
    url = f"{server.rest_url}/v1/models/half_plus_two:predict"
    values = [[float(i), float(i) + 0.5] for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: requests.post(url, json={"instances": x}, timeout=30), values))
    assert [a.status_code for a in answers] == [200] * 8
    assert [a.json()["predictions"] for a in answers] == [[x / 2 + 2 for x in pair] for pair in values]


def test_a_full_queue_answers_503_with_tf_servings_message(start_server, model_store, tmp_path):
    import concurrent.futures

    import requests

    from tests.serving.conftest import wait_for
    from tests.serving.toy_models import Gate

    # One batch thread, one-row batches, one queued batch: while the first request is held
    # in the model, of the next two one waits in the queue and the other is refused.
    server = _batching_server(
        start_server, model_store, tmp_path, "gated",
        "max_batch_size { value: 1 } max_enqueued_batches { value: 1 } num_batch_threads { value: 1 }",
    )
    url = f"{server.rest_url}/v1/models/gated:predict"
    held = Gate(tmp_path / "held")

    def post(gate: Gate):
        return requests.post(url, data=gate.request(), timeout=HANG_GUARD + 60)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, held)
        try:
            assert wait_for(held.started), "the first request never reached the model"
            others = [pool.submit(post, Gate.open(tmp_path / name)) for name in ("second", "third")]
            # Ordering: the one worker is held, so an answer now can only be a refusal.
            assert wait_for(lambda: any(f.done() for f in others))
            refused = [f for f in others if f.done()]
            waiting = [f for f in others if not f.done()]
            assert len(refused) == 1 and len(waiting) == 1
            assert not first.done()
        finally:
            held.release()
        answer = refused[0].result()
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": (
            "The batch scheduling queue to which this task was submitted is full; "
            "currently 1 batches enqueued and max_enqueued_batches is 1")}
        # Once the first is let go, it and the queued one are answered by the model.
        for future in (first, waiting[0]):
            response = future.result()
            assert response.status_code == 200, response.text
            assert response.json() == {"predictions": [{"y": 2.5, "released": True}]}


def test_an_image_damaged_past_its_header_fails_only_its_own_request(start_server, model_store, tmp_path,
                                                                     signflow_server):
    """The request path reads image headers only; the model's decoder refuses the truncated
    PNG, its batch is run again request by request, and only its caller gets the error."""
    import base64
    import concurrent.futures

    import requests

    from tests.fixtures.tiny_model import make_image_bytes
    from tests.serving.conftest import SIGNFLOW_MODEL

    # A batch runs only when full: the four requests below are one batch.
    server = _batching_server(start_server, model_store, tmp_path, SIGNFLOW_MODEL,
                              f"max_batch_size {{ value: 4 }} batch_timeout_micros {{ value: {NEVER_MICROS} }}")
    url = f"{server.rest_url}/v1/models/{SIGNFLOW_MODEL}:predict"
    good = [make_image_bytes("PNG", size=(90 + 9 * i, 40), seed=i) for i in range(3)]
    truncated = make_image_bytes("PNG", size=(200, 80), seed=7)[:200]
    images = [good[0], truncated, good[1], good[2]]

    def post(image: bytes, to: str = url) -> requests.Response:
        body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
        return requests.post(to, json=body, timeout=HANG_GUARD)

    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(post, images))
    assert [a.status_code for a in answers] == [200, 400, 200, 200], [a.text for a in answers]
    assert answers[1].json()["error"].startswith(
        "Input image_bytes, element 0: not an acceptable image (corrupt_image: ")
    # The same images, each alone, on a server without batching.
    alone = [post(image, f"{signflow_server.rest_url}/v1/models/{SIGNFLOW_MODEL}:predict") for image in good]
    for answer, single in zip([answers[0], answers[2], answers[3]], alone):
        assert answer.json()["predictions"][0] == pytest.approx(single.json()["predictions"][0], abs=1e-5)
