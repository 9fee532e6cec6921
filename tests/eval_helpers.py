"""Shared pieces of the evaluation tests: a tiny causal LM, random document streams, a byte table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.eval.bpb import ValStream, stream_from_tokens
from pgolf.bytetable import ByteTable

BOS = 1
VOCAB = 24


class TinyCausalLM(nn.Module):
    """Embedding + one causal attention head (q/k/v Linear) + a Linear head: logits [B, T, V]."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.c_q, self.c_k, self.c_v = (nn.Linear(dim, dim) for _ in range(3))
        self.lm_head = nn.Linear(dim, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)  # [B, T, C]
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)[:, 0]
        return self.lm_head(x + y)


def byte_table(vocab: int = VOCAB) -> ByteTable:
    """ids 0..3 boundary (0 bytes); 4..7 byte pieces (1 byte); the rest 1-3 bytes, odd ids with a leading space."""
    ids = np.arange(vocab)
    boundary = ids < 4
    base = np.where(boundary, 0, np.where(ids < 8, 1, 1 + ids % 3)).astype(np.int16)
    space = (ids >= 8) & (ids % 2 == 1)
    return ByteTable(base_bytes=base, has_leading_space=space, is_boundary=boundary)


def random_tokens(doc_lengths: list[int], seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
    """Documents of BOS + `length` non-boundary tokens each, concatenated."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[BOS], rng.integers(4, vocab, size=n)]) for n in doc_lengths]
    return np.concatenate(docs).astype(np.int64)


def random_stream(doc_lengths: list[int], seed: int = 0, vocab: int = VOCAB) -> ValStream:
    return stream_from_tokens(random_tokens(doc_lengths, seed, vocab), byte_table(vocab), BOS)


def make_workspace(root: Path) -> dict:
    """A real tiny evaluation workspace: trained SentencePiece tokenizer, validation shard, checkpoint, artifact."""
    import json

    import torch

    from data_helpers import english_docs, trained_processor
    from pgolf.config.model import ModelParams
    from pgolf.config.pack import PackParams
    from pgolf.config.quantize import QuantizeParams
    from pgolf.data.shards import SHARDS_MANIFEST, write_shard
    from pgolf.model import GPT, model_config_dict
    from pgolf.pack.pack import pack_model
    from pgolf.quant.apply import quantize_state
    from pgolf.bytetable import byte_table, stream_bytes
    from pgolf.train.checkpoint import CheckpointMeta, save_checkpoint
    from pgolf.train.data import StreamPosition

    docs = english_docs(1200)
    sp = trained_processor(root / "tokenizer", docs, vocab_size=384)
    val = docs[:24]
    tokens = np.concatenate([[sp.bos_id(), *sp.encode(doc)] for doc in val]).astype(np.uint16)
    shards = root / "shards"
    write_shard(shards / "fineweb_val_000000.bin", tokens)
    (shards / SHARDS_MANIFEST).write_text(json.dumps({"vocab_size": sp.vocab_size(), "bos_id": sp.bos_id()}))
    torch.manual_seed(0)
    model = GPT(ModelParams(vocab_size=sp.vocab_size(), layers=2, width=32, heads=2, kv_heads=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    qm = quantize_state(model.state_dict(), {}, QuantizeParams(method="rtn", min_numel=512), model_config_dict(model))
    artifact = root / "pack" / "model.pgolf"
    artifact.parent.mkdir()
    artifact.write_bytes(pack_model(qm, PackParams(), {}).data)
    meta = CheckpointMeta(model_config_dict(model), 1, 0, StreamPosition(), 0, False, "test", {})
    save_checkpoint(root / "checkpoint", meta, model.state_dict(), {})
    return {
        "root": root,
        "checkpoint": root / "checkpoint",
        "artifact": artifact,
        "shards": shards,
        "tokenizer": root / "tokenizer" / "tokenizer.model",
        "tokens": tokens,
        "val_bytes": int(stream_bytes(byte_table(sp), tokens).sum()),  # the audit's val_bytes
    }


def assert_ttt_adapts_only_when_it_should(model, stream, adapter: str) -> None:
    """TTT on `model` with `adapter` (lora | sgd): lr 0 is the frozen score bit for bit; adapting changes it."""
    import numpy as np

    from pgolf.config.eval import EvalTTTParams
    from pgolf.eval.ttt import run_ttt

    base = {"chunk_tokens": 8, "window": 16, "batch_docs": 1 if adapter == "sgd" else 3, "steps": 2, "lora_rank": 2,
            "lora_targets": r"c_q|c_v", "adapter": adapter}
    frozen = run_ttt(model, stream, EvalTTTParams(**base, lr=0.05), adapt=False)
    assert np.array_equal(frozen.nll, run_ttt(model, stream, EvalTTTParams(**base, lr=0.0)).nll, equal_nan=True)
    adapted = run_ttt(model, stream, EvalTTTParams(**base, lr=0.05))
    assert not np.array_equal(frozen.nll, adapted.nll, equal_nan=True)
