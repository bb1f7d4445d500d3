"""TFX's LocalDagRunner, with each component started as soon as the ones it depends on are done.

TFX's own LocalDagRunner runs the components one after the other, in topological
order (tfx/orchestration/local/local_dag_runner.py says it means to run
independent ones in parallel one day). In this pipeline the Evaluator and the
serving check depend only on the Trainer's model, and each spends seconds loading
and calling it (the check mostly in its own probe process): run side by side, as
Kubeflow and Vertex AI run them, a cycle waits for the longer of the two instead of
their sum. (The first components overlap a little too: the schema import and the
baseline resolver with ingestion, the span resolver with StatisticsGen.)

Each component is launched by TFX's own `Launcher`, as LocalDagRunner launches it.
Of the components ready at once, the first runs on the calling thread, as under
LocalDagRunner (so Ctrl-C during the Trainer stops the Trainer), the others on
threads of their own. ML Metadata's SQLite store is not written by two connections
at once: every Launcher's connection takes one process-wide lock while it is open
(TFX opens it only around its reads and writes, not while the executor runs). A
component that fails, or an interrupt, starts no other component; the runner waits
for those still running on their threads (a second interrupt ends the process at
once), then raises. Partial runs (`run_options`) go to LocalDagRunner as they are.

Layer: runner (used by local_runner; Kubeflow and Vertex AI have their own).
"""
from __future__ import annotations

import datetime
import logging
import os
import queue
import threading

from tfx.dsl.compiler import constants
from tfx.orchestration import metadata
from tfx.orchestration.local import runner_utils
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.portable import launcher, runtime_parameter_utils
from tfx.proto.orchestration import pipeline_pb2
from tfx.utils import telemetry_utils

log = logging.getLogger(__name__)

# One ML Metadata connection open at a time in this process (reentrant: TFX nests them).
_METADATA_LOCK = threading.RLock()
# A shell's exit status for a process ended by SIGINT.
EXIT_INTERRUPTED = 130


class _OneAtATimeMetadata(metadata.Metadata):
    """tfx.orchestration.metadata.Metadata whose open connection holds _METADATA_LOCK."""

    def __enter__(self) -> "_OneAtATimeMetadata":
        _METADATA_LOCK.acquire()
        try:
            return super().__enter__()
        except BaseException:
            _METADATA_LOCK.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            _METADATA_LOCK.release()


class ConcurrentDagRunner(LocalDagRunner):
    """Runs a pipeline locally; components whose inputs are ready run at the same time (at most `max_parallel`)."""

    def __init__(self, max_parallel: int = 2):
        super().__init__()
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self._max_parallel = max_parallel

    def run_with_ir(self, pipeline: pipeline_pb2.Pipeline,
                    run_options: pipeline_pb2.RunOptions | None = None) -> None:
        if run_options:
            return super().run_with_ir(pipeline, run_options=run_options)
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: datetime.datetime.now().isoformat()})
        deployment_config = runner_utils.extract_local_deployment_config(pipeline)
        connection = deployment_config.metadata_connection_config
        connection_config = getattr(connection, connection.WhichOneof("connection_config"))

        def launcher_for(node: pipeline_pb2.PipelineNode) -> launcher.Launcher:
            node_id = node.node_info.id
            return launcher.Launcher(
                pipeline_node=node,
                mlmd_connection=_OneAtATimeMetadata(connection_config),
                pipeline_info=pipeline.pipeline_info,
                pipeline_runtime_spec=pipeline.runtime_spec,
                executor_spec=runner_utils.extract_executor_spec(deployment_config, node_id),
                custom_driver_spec=runner_utils.extract_custom_driver_spec(deployment_config, node_id))

        waiting = [node.pipeline_node for node in pipeline.nodes]  # topological order
        done: set[str] = set()
        on_threads: set[str] = set()
        finished: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()
        failure: BaseException | None = None

        def launch_on_thread(node_id: str, component: launcher.Launcher) -> None:
            try:
                component.launch()
            except BaseException as err:  # handed to the runner's thread, which raises it
                finished.put((node_id, err))
            else:
                finished.put((node_id, None))

        def settle(node_id: str, err: BaseException | None) -> None:
            nonlocal failure
            on_threads.discard(node_id)
            if err is None:
                done.add(node_id)
                log.info("Component %s is finished.", node_id)
            elif failure is None:
                failure = err

        with telemetry_utils.scoped_labels({telemetry_utils.LABEL_TFX_RUNNER: "local"}):
            try:
                while failure is None:
                    ready = [n for n in waiting if set(n.upstream_nodes) <= done]
                    ready = ready[:max(self._max_parallel - len(on_threads), 0)]
                    for node in ready:
                        waiting.remove(node)
                    launchers = []
                    for node in ready:
                        node_id = node.node_info.id
                        if node.execution_options.HasField("skip"):
                            log.info("Skipping component %s.", node_id)
                            done.add(node_id)
                        else:
                            launchers.append((node_id, launcher_for(node)))
                    if not launchers and not on_threads:
                        if ready:  # only skipped ones: look again
                            continue
                        break
                    for node_id, component in launchers[1:]:
                        log.info("Component %s is running.", node_id)
                        on_threads.add(node_id)
                        threading.Thread(target=launch_on_thread, args=(node_id, component), name=f"tfx-{node_id}",
                                         daemon=True).start()
                    if launchers:
                        node_id, component = launchers[0]
                        log.info("Component %s is running.", node_id)
                        try:
                            component.launch()
                        except Exception as err:
                            settle(node_id, err)
                        else:
                            settle(node_id, None)
                    else:
                        settle(*finished.get())
                    while not finished.empty():  # whatever else ended meanwhile (only this thread takes)
                        settle(*finished.get())
            except BaseException as err:  # an interrupt, or a failure launching a component
                failure = err
            if on_threads:
                log.warning("waiting for %s to finish before stopping the run (interrupt again to end at once)",
                            ", ".join(sorted(on_threads)))
            try:
                while on_threads:
                    settle(*finished.get())
            except KeyboardInterrupt:
                # The run lock and the probe's input are released by the kernel when the process ends.
                log.error("interrupted again: ending with %s still running", ", ".join(sorted(on_threads)))
                os._exit(EXIT_INTERRUPTED)
        if failure is not None:
            raise failure
        if waiting:  # upstream nodes that are not in the pipeline: a compiler bug, not a run to report as done
            raise RuntimeError(f"components never ready: {', '.join(n.node_info.id for n in waiting)}")
