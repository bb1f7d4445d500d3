"""Serves the candidate model in a separate process and checks its answers; see component.py."""
