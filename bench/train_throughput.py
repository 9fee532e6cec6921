"""Tokens/s of pgolf's training step against a minimal plain-PyTorch version of the same model and
optimizer (written below), in the same process, alternating runs, every option off. Last line: the
ratio pgolf/plain.

Before it, the cost of each option (pgolf.ablation_options) on alone: a profile's train section
(default frontier-cpu) with every option of the table off is the baseline; each option the profile
turns on is measured alone on top of it, all in the same run, rounds alternating; the report gives
tokens/s and the step-time ratio option/baseline (> 1: slower). Options are measured fully on:
depth recurrence switched on from the first step, a sequence-length schedule at its final length.

    python bench/train_throughput.py [--rounds 5] [--steps 8] [--threads 1] [--profile frontier-cpu] [--no-options]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.ablation_options import OPTIONS, assign, partition
from pgolf.config.train import TrainParams
from pgolf.data.shards import write_shard
from pgolf.dist import init_dist
from pgolf.profiles import load_profile, merge
from pgolf.train.loop import Trainer

VOCAB = 1024
REPO = Path(__file__).resolve().parents[1]
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


# ---- the plain reference: one file, no pgolf --------------------------------------------------
class PlainAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, qk_gain: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.v = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.o.weight)
        self.gain = nn.Parameter(torch.full((heads,), qk_gain))
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        self.register_buffer("inv", inv, persistent=False)

    def rope(self, x: Tensor) -> Tensor:
        ang = torch.outer(torch.arange(x.size(2), dtype=torch.float32), self.inv)
        cos, sin, h = ang.cos(), ang.sin(), x.size(-1) // 2
        return torch.cat((x[..., :h] * cos + x[..., h:] * sin, x[..., h:] * cos - x[..., :h] * sin), -1)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q = self.rope(F.rms_norm(q, (self.hd,))) * self.gain[None, :, None, None]
        k = self.rope(F.rms_norm(k, (self.hd,)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class PlainBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mlp_mult: float) -> None:
        super().__init__()
        self.attn = PlainAttention(dim, heads, kv_heads, 1.5)
        self.fc = nn.Linear(dim, int(mlp_mult * dim), bias=False)
        self.proj = nn.Linear(int(mlp_mult * dim), dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        x = self.mix[0] * x + self.mix[1] * x0
        x = x + self.attn_scale * self.attn(F.rms_norm(x, (x.size(-1),)))
        return x + self.mlp_scale * self.proj(F.relu(self.fc(F.rms_norm(x, (x.size(-1),)))).square())


class PlainGPT(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, kv_heads: int, mlp_mult: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        nn.init.normal_(self.emb.weight, std=0.005)
        self.blocks = nn.ModuleList(PlainBlock(dim, heads, kv_heads, mlp_mult) for _ in range(layers))
        self.skip = nn.Parameter(torch.ones(layers // 2, dim))

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        x = x0 = F.rms_norm(self.emb(idx), (self.emb.embedding_dim,))
        half, skips = len(self.blocks) // 2, []
        for i, block in enumerate(self.blocks):
            if i >= half and skips:
                x = x + self.skip[i - half] * skips.pop()
            x = block(x, x0)
            if i < half:
                skips.append(x)
        logits = F.linear(F.rms_norm(x, (x.size(-1),)), self.emb.weight)
        logits = 30.0 * torch.tanh(logits / 30.0)
        return F.cross_entropy(logits.view(-1, VOCAB).float(), targets.view(-1))


def plain_newton_schulz(G: Tensor, steps: int = 5) -> Tensor:
    a, b, c = NS_COEFFICIENTS
    X = G / (G.norm() + 1e-7)
    tall = X.size(0) > X.size(1)
    X = X.T if tall else X
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class PlainMuon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = plain_newton_schulz(p.grad.add(buf, alpha=group["momentum"]))
                p.add_(g * max(1.0, p.size(0) / p.size(1)) ** 0.5, alpha=-group["lr"])


class PlainRun:
    def __init__(self, params: TrainParams, tokens: np.ndarray) -> None:
        m = params.model
        torch.manual_seed(0)
        self.model = PlainGPT(m.layers, m.width, m.heads, m.kv_heads, m.mlp_mult)
        named = list(self.model.named_parameters())
        matrices = [p for n, p in named if n.startswith("blocks.") and p.ndim == 2 and not n.endswith("mix")]
        others = [p for n, p in named if not (n.startswith("blocks.") and p.ndim == 2 and not n.endswith("mix"))]
        self.opts = [PlainMuon(matrices, 0.04, 0.95), torch.optim.Adam(others, lr=0.04, betas=(0.9, 0.95))]
        self.tokens, self.pos, self.batch, self.seq = tokens, 0, params.batch_tokens, params.seq_len

    def train_step(self) -> None:
        if self.pos + self.batch + 1 > len(self.tokens):
            self.pos = 0
        chunk = torch.from_numpy(self.tokens[self.pos : self.pos + self.batch + 1].astype(np.int64))
        self.pos += self.batch
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        self.model(chunk[:-1].view(-1, self.seq), chunk[1:].view(-1, self.seq)).backward()
        for opt in self.opts:
            opt.step()


# ---- timing ----------------------------------------------------------------------------------
def tokens_per_second(step, steps: int, batch_tokens: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_tokens / (time.perf_counter() - start)


def option_params(profile: str) -> tuple[dict[str, TrainParams], list[str]]:
    """"baseline" (the profile's train section, every option off) and, per option on in the profile, that
    baseline with the option alone on; and the options left out because alone they change nothing (they need another)."""
    train = TrainParams.model_validate(merge(TrainParams().model_dump(mode="json"), load_profile(profile, REPO / "profiles").overrides.get("train", {})))
    on, _ = partition(list(OPTIONS), {"train": train.model_dump(mode="json")})
    bench = {"resume": False, "device": "cpu", "checkpoint_every": 0, "val_every": 0}

    def without(skip: str | None) -> dict:
        data = {"train": train.model_dump(mode="json")}
        for option in on:
            if option.name != skip:
                for key, value in option.off.items():
                    assign(data, key, value)
        return merge(data["train"], bench)

    base = without(None)
    configs = {"baseline": base}
    for option in on:
        configs[option.name] = without(option.name)
    left_out = [name for name, data in configs.items() if name != "baseline" and data == base]
    out = {}
    for name, data in configs.items():
        if name in left_out:
            continue
        final = TrainParams.model_validate(data).final_seq_len
        data["seq_len_schedule"] = [[0.0, length] for _, length in data["seq_len_schedule"]][-1:]
        data["model"]["recur_from_progress"] = 0.0
        data.update(val_tokens=final, val_batch_tokens=final)
        out[name] = TrainParams.model_validate(data)
    return out, left_out


def trainer_step(params: TrainParams, shards: Path, name: str):
    trainer = Trainer(params, shards, shards / f"out-{name}", init_dist("cpu"), None)
    if params.model.recur_loops:
        trainer.model.set_recurrence(True)
    return lambda: trainer.train_step(params.final_seq_len)


def measure(steps: dict, batch_tokens: dict, rounds: int, n: int) -> dict[str, float]:
    """Median tokens/s per entry, rounds alternating between the entries after two warm-up steps each."""
    for step in steps.values():
        for _ in range(2):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            rates[name].append(tokens_per_second(step, n, batch_tokens[name]))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared machine; 0 = torch default)")
    parser.add_argument("--profile", default="frontier-cpu", help="profile whose options are measured one at a time (default frontier-cpu)")
    parser.add_argument("--option-rounds", type=int, default=3, help="rounds of the per-option report (default 3)")
    parser.add_argument("--no-options", action="store_true", help="skip the per-option report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = TrainParams.model_validate({"resume": False, "device": "cpu", "val_tokens": 256, "val_batch_tokens": 256})
    tokens = np.random.default_rng(0).integers(0, VOCAB, 200_000).astype(np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp)
        write_shard(shards / "fineweb_train_000000.bin", tokens)
        write_shard(shards / "fineweb_val_000000.bin", tokens[:10_000])
        (shards / "manifest.json").write_text(f'{{"vocab_size": {VOCAB}, "bos_id": 1}}')
        pgolf_run = Trainer(params, shards, shards / "out", init_dist("cpu"), None)
        plain_run = PlainRun(params, tokens)
        runs = {"pgolf": pgolf_run.train_step, "plain": plain_run.train_step}
        rates = measure(runs, {name: params.batch_tokens for name in runs}, args.rounds, args.steps)
        if not args.no_options:
            configs, left_out = option_params(args.profile)
            steps = {name: trainer_step(p, shards, name) for name, p in configs.items()}
            option_rates = measure(steps, {name: p.batch_tokens for name, p in configs.items()}, args.option_rounds, args.steps)
            base = option_rates["baseline"]
            print(f"options on alone over the baseline (profile {args.profile}'s train section, every option off); "
                  f"step-time ratio option/baseline, > 1 is slower:")
            for name, rate in option_rates.items():
                print(f"  {name:<20} {rate:>9,.0f} tokens/s  {base / rate:6.3f}")
            for name in left_out:
                print(f"  {name:<20} not measured: alone it changes nothing (it needs another option on)")
    pgolf_rate, plain_rate = rates["pgolf"], rates["plain"]
    print(f"threads: {torch.get_num_threads()} batch_tokens: {params.batch_tokens} seq_len: {params.seq_len}", file=sys.stderr)
    print(f"pgolf_tokens_per_second: {pgolf_rate:.0f}")
    print(f"plain_tokens_per_second: {plain_rate:.0f}")
    ratio = pgolf_rate / plain_rate if plain_rate > 0 else math.nan
    print(f"{ratio:.3f}")


if __name__ == "__main__":
    main()
