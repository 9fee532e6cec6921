"""Tiny shards and params shared by the training and distribution tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pgolf.config.train import TrainParams
from pgolf.data.shards import write_shard

VOCAB = 48


def markov_stream(n: int, seed: int) -> np.ndarray:
    """next = 3*prev + noise in {0,1,2} (mod VOCAB): learnable, entropy ln 3."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 3, n)
    out = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        out[i] = (out[i - 1] * 3 + noise[i]) % VOCAB
    return out


def make_shards(directory: Path, train_shards: int = 2, train_tokens: int = 6000, val_tokens: int = 3000) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_shard(directory / "fineweb_val_000000.bin", markov_stream(val_tokens, 0))
    for i in range(train_shards):
        write_shard(directory / f"fineweb_train_{i:06d}.bin", markov_stream(train_tokens, i + 1))
    (directory / "manifest.json").write_text(json.dumps({"vocab_size": VOCAB, "bos_id": 1}))
    return directory


def tiny_params(tmp: Path, **overrides: Any) -> TrainParams:
    base: dict[str, Any] = dict(
        model=dict(layers=2, width=32, heads=2, kv_heads=1),
        iterations=12,
        batch_tokens=512,
        seq_len=32,
        val_tokens=1024,
        val_batch_tokens=512,
        val_every=5,
        checkpoint_every=0,
        resume_dir=str(tmp / "resume"),
        device="cpu",
        log_every=1,
    )
    base.update(overrides)
    return TrainParams.model_validate(base)


def assert_compiled_matches_eager(model: "torch.nn.Module", idx: "torch.Tensor") -> None:
    """`model` compiled whole (fullgraph: no graph breaks) gives eager's loss and gradients."""
    import copy

    import torch

    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="eager", fullgraph=True)
    loss, loss_c = model.loss(idx, idx), compiled.loss(idx, idx)
    assert torch.allclose(loss, loss_c, rtol=1e-6)
    loss.backward()
    loss_c.backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
