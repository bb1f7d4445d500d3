"""Loaded at start-up by a serving process under test: the training side's packages do not exist.

Any import of them fails as it would on a machine where only the serving side is installed
(`pip install .[serving]`), and the refused names are written to $SIGNFLOW_REFUSED_IMPORTS.
"""
import importlib.abc
import os
import sys

ABSENT = ("tfx", "tfx_bsl", "tensorflow_model_analysis", "tensorflow_data_validation", "apache_beam",
          "ml_metadata", "pipeline", "components")


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in ABSENT:
            with open(os.environ["SIGNFLOW_REFUSED_IMPORTS"], "a", encoding="utf-8") as log:
                log.write(name + "\n")
            raise ModuleNotFoundError(f"No module named {name!r} (absent on a serving-only install)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
