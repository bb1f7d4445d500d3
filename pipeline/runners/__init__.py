"""Where the pipeline runs: each runner resolves its typed config's locations once (one PipelinePaths), builds the
pipeline with create_pipeline(**pipeline_arguments(config, paths)), and hands it to one orchestrator. The ingest
runner runs the ExampleGen alone, under the same name and MLMD.

    local_runner.py                               `signflow run`: SQLite MLMD, the run lock
    concurrent_dag.py                             its orchestrator: TFX's LocalDagRunner, independent components
                                                  side by side
    kubeflow_v2_runner.py + kubeflow_config.py    `signflow compile-kubeflow` / `collect-kubeflow`
    airflow_dag.py                                an Airflow DAG file (a process entry point of its own)
    ingest_runner.py                              `signflow ingest`: the ExampleGen alone

May import definition/, components/, and training_server's run_lock and run_summary (the lock a local run takes
and the summary it prints).
"""
