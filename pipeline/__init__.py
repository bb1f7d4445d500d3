"""signflow's training side, by role (each subpackage's docstring says what it may import):

    definition/        what runs: the typed config, the resolved paths, create_pipeline, the TFMA gate
    runners/           where it runs: locally (`signflow run`), Kubeflow V2 / Vertex AI, Airflow, ingestion alone
    training_server/   keeping it running: schedule, status, run lock, run summary, rollback
    batch/             `signflow batch-predict`: a served version over files, in Beam
    cli.py             the `signflow` command

Imports point down: cli -> batch, training_server, runners -> definition ->
components/ and serving/. components/ never imports pipeline/. Keras 2
(TF_USE_LEGACY_KERAS) is chosen by the process entry points (cli.py,
runners/airflow_dag.py, the Dockerfile), never on import of a package.
"""
