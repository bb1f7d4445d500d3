"""Ingestion: the inbox (base64 JSON records and image files) -> spans of tf.Examples (SignatureExampleGen).

Modules: records (parse + validate one file), landing (folders, spans, restart
safety), executor / driver / spec / component (the TFX component), cli
(`signflow ingest`).
"""
