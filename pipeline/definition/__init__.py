"""What runs: the typed config (configs.py), where it reads and writes (paths.py), the pipeline (pipeline.py) and
its quality gate (evaluation.py).

May import components/ and TFX; never runners/, training_server/ or batch/. Decides nothing about where the
pipeline runs: the runners resolve the paths and choose the orchestrator.
"""
