"""What runs: the typed config (configs.py), where it reads and writes (paths.py), the pipeline (pipeline.py),
its quality gate (evaluation.py) and the gate's own TFMA metrics (signer_metrics.py: top-1 accuracy that counts a
label unknown to a model as wrong, and the Wilson upper bound of each signer's accuracy; verification_metrics.py:
EER, FAR and FRR), and how the Evaluator calls the models (eval_predictions.py: once per model and batch).

May import components/ and TFX; never runners/, training_server/ or batch/. Decides nothing about where the
pipeline runs: the runners resolve the paths and choose the orchestrator.
"""
