"""The signflow Trainer module: run.run_fn (what TFX calls) over data / model / train / export / report."""
import os as _os

# Keras 2 (tf-keras) everywhere; must be set before anything imports TensorFlow.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
