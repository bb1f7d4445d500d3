"""signflow's TF Serving-compatible model server, deployable without the training side.

Layers, bottom up (a module imports only from its own layer or below):

    contract, layout, errors, images, settings (+ config_protos)   shared names and typed settings
    tensors, repository, batching, metrics, request_log,            building blocks
        rollback, model_folder
    servable                                                        one loaded version (TensorFlow)
    registry                                                        loaded versions, leases, labels
    handlers                                                        the transport-free data plane
    rest_codec, rest, feedback, grpc_service, ui_page, ui_routes    the transports
    server, cli, __main__, ui_command                               wiring and entry points

client.py talks to a server over the wire and imports only contract and images.
ui_command (`signflow ui --api URL`, the web page in front of a real TF Serving)
imports only settings and ui_page, never TensorFlow.
Nothing in serving/ imports pipeline/ or components/, nor Keras: a SavedModel is loaded
with tf.saved_model, so the Keras switch of the training side's entry points is not needed.
"""
