"""signflow's own TFX components, one module or package each, and the Trainer's module.

Layer: components. May import TFX, TensorFlow and serving/ (images, layout);
never pipeline/. Keras 2 (TF_USE_LEGACY_KERAS) is chosen by the process entry
point that loads them (pipeline/cli.py, the Dockerfile's ENV, tests/conftest.py),
not on import.
"""
