"""The artifact: container format, codecs, entropy coder, packing pipeline and loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgolf.pack.load import Artifact


def load_artifact(path) -> Artifact:
    """See `pgolf.pack.load.load_artifact`."""
    from pgolf.pack.load import load_artifact as _load

    return _load(path)


def load_model_from_artifact(path):
    """See `pgolf.pack.load.load_model_from_artifact`."""
    from pgolf.pack.load import load_model_from_artifact as _load

    return _load(path)


__all__ = ["load_artifact", "load_model_from_artifact"]
