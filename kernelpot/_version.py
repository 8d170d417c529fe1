"""The package version, in one place (read by ``kernelpot`` and the model files)."""

__version__ = "0.1.0.dev0"
