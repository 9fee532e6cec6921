"""The artifact: container format, codecs, entropy coder, packing pipeline and loader."""

from pgolf.pack.load import Artifact, load_artifact, load_model_from_artifact

__all__ = ["Artifact", "load_artifact", "load_model_from_artifact"]
