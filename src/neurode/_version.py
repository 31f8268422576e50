"""The package version, at the ground layer so that any layer may read it."""

__version__ = "0.1.0"
