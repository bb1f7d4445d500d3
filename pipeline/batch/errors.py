"""The one error of batch prediction: a failure before or around the Beam job, with the exit status it stands for.

Layer: batch. Standard library only.
"""
from __future__ import annotations


class BatchPredictError(Exception):
    """A failure before or around the pipeline, with the exit status it stands for (1 infrastructure, 2 usage)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status
