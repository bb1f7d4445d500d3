"""The curated, committed schema of ingested tf.Examples (for ImportSchemaGen)."""
from __future__ import annotations

import os

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))
SCHEMA_PATH = os.path.join(SCHEMA_DIR, "schema.pbtxt")
