"""The project's exception types: every expected failure is one of these, with a one-line message."""


class PgolfError(Exception):
    """Base class: a failure the user can act on. Stages print it as one line and exit 1."""


class ParamsError(PgolfError):
    """params.yaml is missing, unreadable, or a value breaks its section's schema (exit 2)."""


class DataError(PgolfError):
    """Input data is missing, malformed, truncated or inconsistent."""


class ShardError(DataError):
    """A token shard has a bad header, size or content."""


class AuditError(DataError):
    """The byte accounting or a data-integrity check failed."""


class ArtifactError(PgolfError):
    """A packed artifact is malformed, corrupt or over its byte limit."""

