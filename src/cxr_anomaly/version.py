"""The package's version, in a leaf module: the package root imports the registry, which the bottom layer may not."""

__version__ = "0.1.0"
