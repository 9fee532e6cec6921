"""Data: the fetched corpora, the official shard format, and export of documents to shards."""
