"""Packed bytes of each general compressor and of the ANS entropy coder against the order-0
entropy bound, side by side, on the same quantized model.

Model: the trained checkpoint if it exists, else a randomly initialised model of
`--random-config` (default: the challenge baseline's shape) with small Gaussian noise added to
every weight (zero-initialised projections would otherwise be all-zero), quantized with RTN.
Symbols of each tensor group are concatenated and compressed whole (the strongest setting for a
general compressor); ANS bytes include the group's codebook as stored in the artifact header.

    python bench/pack_ratio.py [--checkpoint data/train/checkpoint] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.pack.codecs import compress, shuffle_bytes
from pgolf.pack.entropy import encode, fit_codebook, order0_entropy_bits
from pgolf.pack.pack import codebook_bytes, pack_model
from pgolf.quant.apply import QuantizedModel, quantize_state

BASELINE = {"vocab_size": 1024, "layers": 9, "width": 512, "heads": 8, "kv_heads": 4, "mlp_mult": 2.0}
INIT_NOISE_STD = 0.02
COMPRESSORS = (("zstd-22", "zstd", 22), ("brotli-11", "brotli", 11), ("lzma-9e", "lzma", 9))


def quantized_model(checkpoint: Path, random_config: dict, params: QuantizeParams) -> tuple[QuantizedModel, str]:
    if (checkpoint / "model.safetensors").is_file():
        from pgolf.io import read_json
        from pgolf.model.checkpoint import load_model

        model = load_model(checkpoint)
        return quantize_state(model.state_dict(), {}, params, read_json(checkpoint / "checkpoint.json")["model_config"]), f"checkpoint {checkpoint}"
    from pgolf.model import build_model

    torch.manual_seed(0)
    model = build_model(random_config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * INIT_NOISE_STD)
    return quantize_state(model.state_dict(), {}, params, model.config.model_dump(mode="json")), "random init + noise"


def measure(qm: QuantizedModel) -> list[dict]:
    groups: dict[str, list[np.ndarray]] = {}
    for qt in qm.quantized.values():
        groups.setdefault(qt.group, []).append(qt.q.numpy().ravel())
    rows = []
    for group, parts in sorted(groups.items()):
        symbols = np.concatenate(parts)
        book = fit_codebook(symbols)
        row = {"group": group, "symbols": int(symbols.size), "entropy": order0_entropy_bits(symbols) / 8}
        started = time.perf_counter()
        row["ans"] = len(encode(symbols, book)) + codebook_bytes(book.to_json())
        row["ans_s"] = time.perf_counter() - started
        for label, codec, level in COMPRESSORS:
            started = time.perf_counter()
            row[label] = len(compress(symbols.tobytes(), codec, level))
            row[f"{label}_s"] = time.perf_counter() - started
        rows.append(row)
    scales = b"".join(qt.scale.numpy().tobytes() for qt in qm.quantized.values())
    side = {"group": "scales (fp16)", "symbols": len(scales) // 2, "entropy": float("nan"), "ans": None}
    for label, codec, level in COMPRESSORS:
        side[label] = min(len(compress(scales, codec, level)), len(compress(shuffle_bytes(scales, 2), codec, level)))
    rows.append(side)
    return rows


def print_table(rows: list[dict]) -> None:
    labels = ["ans"] + [label for label, _, _ in COMPRESSORS]
    print(f"{'group':<14} {'symbols':>10} {'entropy B':>11} " + " ".join(f"{label:>18}" for label in labels))
    for row in rows:
        cells = []
        for label in labels:
            value = row.get(label)
            ratio = value / row["entropy"] if value and row["entropy"] == row["entropy"] and row["entropy"] else None
            cells.append(f"{'-' if value is None else value:>10}" + (f" ({ratio:.4f}x)" if ratio else " " * 10))
        entropy = "-" if row["entropy"] != row["entropy"] else f"{row['entropy']:.0f}"
        print(f"{row['group']:<14} {row['symbols']:>10} {entropy:>11} " + " ".join(f"{c:>18}" for c in cells))
    sym = [r for r in rows if r["ans"] is not None]
    total = {label: sum(r[label] for r in sym) for label in labels}
    entropy = sum(r["entropy"] for r in sym)
    print(f"{'all symbols':<14} {sum(r['symbols'] for r in sym):>10} {entropy:>11.0f} " + " ".join(f"{total[label]:>10} ({total[label] / entropy:.4f}x)" for label in labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
    parser.add_argument("--random-config", type=json.loads, default=BASELINE, help="model config JSON when there is no checkpoint")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    qm, source = quantized_model(args.checkpoint, args.random_config, QuantizeParams(method="rtn"))
    print(f"model: {source}; quantized tensors: {len(qm.quantized)}")
    rows = measure(qm)
    print_table(rows)
    artifact = pack_model(qm, PackParams())
    print(f"artifact (ans + brotli side, default pack params): bytes_model {artifact.bytes_model}, symbols {artifact.bytes_symbols} = {artifact.bytes_symbols / artifact.entropy_bytes:.4f}x entropy")
    if args.json:
        args.json.write_text(json.dumps({"source": source, "rows": rows, "bytes_model": artifact.bytes_model}, indent=2))


if __name__ == "__main__":
    main()
