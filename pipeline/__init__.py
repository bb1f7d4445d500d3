import os as _os

# Keras 2 (tf-keras) everywhere: TFX 1.16 needs it, and TFT/TFMA pick the Keras
# mode when they are first imported, so this must precede any TensorFlow import.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
