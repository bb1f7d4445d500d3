"""Pushes blessed models into TF Serving's versioned layout; see component.py (TFX), publish.py (filesystem)."""
