"""pgolf plan, bytes: the packed artifact's size predicted from params alone, before any training.

The model is built on the meta device (no memory, no weights), its tensors classified exactly as
the quantizer classifies them (`pgolf.quant.groups`), and each group's symbols costed by the
records' SDClip relation: a Gaussian-like row quantized with step k*std/qmax has symbol entropy
H ~ b - log2 k + c (PR #1855/#2135 lineage). Here H is the exact entropy of a Gaussian of variance
1 + noise * step^2 / 12 (GPTQ's error feedback spreads symbols; `noise` fitted) discretized at
step k/qmax and clipped at +-qmax; the coder's ratio to it and every other constant (scales,
passthrough, row references, the container) come from `pgolf.plan_table`, fitted on measured packs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgolf.config.model import ModelParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.model.gpt import GPT
from pgolf.plan_table import BYTE_MODEL, ByteModel
from pgolf.quant.groups import GROUPS, is_quantizable, tensor_group

PASSTHROUGH = "passthrough"
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    group: str  # a quantizer group, or "passthrough"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def census(model: ModelParams, quantize: QuantizeParams) -> list[TensorInfo]:
    """Every stored tensor of the model (tied weights once), grouped as `quantize_state` groups them."""
    if model.vocab_size is None:
        raise ValueError("train.model.vocab_size must be resolved before the census")
    with torch.device("meta"):
        gpt = GPT(model)
    seen: set[int] = set()
    out = []
    for name, tensor in gpt.state_dict(keep_vars=True).items():
        if id(tensor) in seen:  # a tied tensor: stored once, under its first name
            continue
        seen.add(id(tensor))
        group = tensor_group(name) if is_quantizable(tensor, quantize.min_numel) else PASSTHROUGH
        out.append(TensorInfo(name, tuple(tensor.shape), group))
    return out


def gaussian_symbol_entropy(bits: int, k: float, noise: float = 0.0) -> float:
    """Bits per symbol of a unit Gaussian (variance 1 + noise*step^2/12) quantized at step k/qmax, clipped to +-qmax."""
    qmax = 2 ** (bits - 1) - 1
    step = k / qmax
    sigma = math.sqrt(1.0 + noise * step * step / 12.0)
    cdf = [0.5 * math.erfc(-((j + 0.5) * step) / (sigma * math.sqrt(2.0))) for j in range(-qmax, qmax)]
    edges = [0.0, *cdf, 1.0]
    probs = [b - a for a, b in zip(edges, edges[1:])]
    return -sum(p * math.log2(p) for p in probs if p > 0.0)


def embedding_coder_ratio(tokens_per_row: float, corpus: str = "*", table: ByteModel = BYTE_MODEL) -> float:
    """Coded / Gaussian bits of a trained embedding: rows of rarely seen tokens move together
    (near-duplicates the row references and column classes exploit), fewer as training sees each
    row more often. Piecewise linear in log10(training tokens per vocabulary row), clamped; the
    curve of `corpus` where one was measured, else the default corpus's ("*")."""
    points = table.embedding_ratio.get(corpus, table.embedding_ratio["*"])
    x = math.log10(max(tokens_per_row, 1.0))
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


@dataclass(frozen=True)
class GroupBytes:
    group: str
    params: int  # parameters (symbols for a quantized group)
    tensors: int
    bits: int | None = None
    k: float | None = None
    bits_per_symbol: float = 0.0  # predicted coded bits per symbol
    symbol_bytes: float = 0.0
    scale_bytes: float = 0.0
    extras_bytes: float = 0.0
    plain_bytes: float = 0.0  # passthrough tensors

    @property
    def total(self) -> float:
        return self.symbol_bytes + self.scale_bytes + self.extras_bytes + self.plain_bytes


def lowrank_tensors(tensors: list[TensorInfo], quantize: QuantizeParams) -> set[str]:
    """Names LQER corrects: every quantized matrix, or the lowrank_top largest (a stand-in for the
    largest residuals, unknown before training); none when lowrank_rank is 0."""
    quantized = sorted((t for t in tensors if t.group != PASSTHROUGH), key=lambda t: -t.numel)
    if not quantize.lowrank_rank:
        return set()
    return {t.name for t in (quantized[: quantize.lowrank_top] if quantize.lowrank_top else quantized)}


def _extras_bytes(tensors: list[TensorInfo], group: str, quantize: QuantizeParams, lowrank: set[str], table: ByteModel) -> float:
    """LQER factors and AWQ-lite salient remainders of one group (float16 values; integers at their bits)."""
    spec = getattr(quantize, group)
    total = 0.0
    if spec.salient and quantize.salient_bits > spec.bits:
        shift = quantize.salient_bits - spec.bits
        total += sum(t.shape[0] * min(spec.salient * quantize.salient_top, t.shape[1]) for t in tensors) * shift / 8 * table.salient_ratio
    for t in tensors:
        if t.name in lowrank:
            r = min(quantize.lowrank_rank, *t.shape)
            for n, bits in ((t.shape[0] * r, quantize.lowrank_u_bits), (t.shape[1] * r, quantize.lowrank_v_bits)):
                total += n * 2 * table.float_ratio if not bits else n * bits / 8 + math.ceil(n / quantize.lowrank_group) * 2 * table.float_ratio
    return total


def group_bytes(tensors: list[TensorInfo], quantize: QuantizeParams, gptq_groups: set[str], tokens_per_row: float,
                corpus: str = "*", table: ByteModel = BYTE_MODEL) -> dict[str, GroupBytes]:
    """Predicted bytes per quantizer group and for the passthrough tensors (before the container)."""
    out: dict[str, GroupBytes] = {}
    lowrank = lowrank_tensors(tensors, quantize)
    for group in GROUPS:
        mine = [t for t in tensors if t.group == group]
        if not mine:
            continue
        spec = getattr(quantize, group)
        noise = table.gptq_noise if group in gptq_groups else 0.0
        ratio = table.coder_ratio.get(group, 1.0)
        if group == "embedding":
            ratio *= embedding_coder_ratio(tokens_per_row, corpus, table)
        bps = gaussian_symbol_entropy(spec.bits, spec.k, noise) * ratio
        symbols = sum(t.numel for t in mine)
        rows = sum(t.shape[0] for t in mine)
        out[group] = GroupBytes(group, symbols, len(mine), spec.bits, spec.k, bps, symbols * bps / 8,
                                rows * 2 * table.scale_ratio, _extras_bytes(mine, group, quantize, lowrank, table))
    plain = [t for t in tensors if t.group == PASSTHROUGH]
    if plain:
        size = DTYPE_BYTES[quantize.passthrough_dtype]
        ratio = {True: table.plain_matrix_ratio, False: table.plain_vector_ratio}
        out[PASSTHROUGH] = GroupBytes(PASSTHROUGH, sum(t.numel for t in plain), len(plain),
                                      plain_bytes=sum(t.numel * size * ratio[len(t.shape) == 2 and min(t.shape) > 1] for t in plain))
    return out


def container_bytes(tensors: list[TensorInfo], quantize: QuantizeParams, pack: PackParams, table: ByteModel = BYTE_MODEL) -> float:
    """The header (magic, config, tensor table, stream table) and the row references' stream (found
    in trained embeddings of at most 7 bits: their near-duplicate rows)."""
    quantized = sum(t.group != PASSTHROUGH for t in tensors)
    entries = 2 * quantized + (len(tensors) - quantized)
    refs = table.row_refs_bytes if pack.row_refs and any(t.group == "embedding" for t in tensors) and quantize.embedding.bits <= 7 else 0.0
    return table.container_base + table.container_per_entry * entries + refs
