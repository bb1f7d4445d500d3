"""signflow's TF Serving-compatible model server, deployable without the training side.

Layers, bottom up (a module imports only from its own layer or below):

    contract, layout, errors, images, settings (+ config_protos)   shared names and typed settings
    tensors, repository, batching, metrics, request_log             building blocks
    servable                                                        one loaded version (TensorFlow)
    registry                                                        loaded versions, leases, labels
    handlers                                                        the transport-free data plane
    rest_codec, rest, feedback, grpc_service                        the transports
    server, cli, __main__                                           wiring and entry points

client.py talks to a server over the wire and imports only contract and images.
Nothing in serving/ imports pipeline/ or components/.
"""
import os as _os

# Keras 2 (tf-keras) everywhere: TFX 1.16 needs it, and TFT/TFMA pick the Keras
# mode when they are first imported, so this must precede any TensorFlow import.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
