"""pgolf: a cached DVC pipeline and library for the Parameter Golf challenge."""

__version__ = "0.1.0"
