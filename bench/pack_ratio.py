"""Whole-model packing against the order-0 entropy bound, brotli-11 and the records' per-group
`lrzip -L 9`, with encode/decode seconds, on the default run and on a record-size model.

Models:
- `default`: the default run's quantized model (`data/quantize`, the pack stage's input; read only).
- `record`: a 35.9 M-parameter model of the record's shape (PR #2135: 11 x 512, MLP 4x, 8/4 heads,
  vocab 8192) whose matrices are *synthesized* with the statistics measured on the default run's
  trained weights (per role: excess kurtosis -> Student-t, spread of column and row log-stds;
  measured from `data/train/checkpoint` when present, else the figures recorded below), a fraction
  of near-duplicate embedding rows (rare tokens, as measured there), then quantized as the record
  does (int6 with k 13.0 attention / 11.5 MLP, int7 embedding with k 14; round-to-nearest).

Columns (symbols only, per role group as the record groups them): the order-0 entropy, pgolf's
stream coder (the pack params given), brotli-11 of the group as stored (row-major), and the
record's per-group packing: rows of the embedding, c_q and fc sorted by L1 similarity (the
permutations stored as uint16 and brotli-11 compressed, counted), column-major, `lrzip -z -L 9`.
Whole model: the artifact against the entropy bound (pgolf.pack.accounting), and the same side
streams and container added to the brotli and lrzip symbol totals.

    python bench/pack_ratio.py --model record --lrzip /path/to/lrzip [--json out.json]

lrzip is not a pgolf dependency (nothing loads with it); without `--lrzip` its column is skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.codecs import compress
from pgolf.pack.entropy import order0_entropy_bits
from pgolf.pack.load import artifact_from_parsed
from pgolf.pack.pack import LAYER_INDEX, pack_metrics, pack_model
from pgolf.quant.apply import QuantizedModel, quantize_state

RECORD = {"vocab_size": 8192, "layers": 11, "width": 512, "heads": 8, "kv_heads": 4, "mlp_mult": 4.0, "activation": "leaky_relu2", "rope_dims": 16}
RECORD_QUANT = {"method": "rtn", "attention": {"bits": 6, "k": 13.0}, "mlp": {"bits": 6, "k": 11.5}, "embedding": {"bits": 7, "k": 14.0}}
# Measured on the default run's trained checkpoint (4 x 128, vocab 1024): per role, the excess
# kurtosis of rows scaled to unit std, the std of log column-std and of log row-std.
MEASURED = {
    "tok_emb.weight": (0.82, 0.110, 0.505), "blocks.attn.c_q.weight": (0.04, 0.102, 0.121), "blocks.attn.c_k.weight": (0.31, 0.208, 0.084),
    "blocks.attn.c_v.weight": (0.22, 0.216, 0.071), "blocks.attn.proj.weight": (0.03, 0.103, 0.053), "blocks.mlp.fc.weight": (-0.10, 0.106, 0.271),
    "blocks.mlp.proj.weight": (0.41, 0.321, 0.042),
}
DUPLICATE_ROWS = 0.03  # embedding rows near one shared vector (rare tokens; 22 % of the default run's 1024)
DUPLICATE_NOISE = 0.12  # their distance to it, relative to a row's norm (measured: nearest-neighbour L1 / row L1)
SIMSORT_ROLES = ("tok_emb.weight", "blocks.attn.c_q.weight", "blocks.mlp.fc.weight")  # the record's _SIMSORT_KEYS


def measured_stats(checkpoint: Path) -> dict[str, tuple[float, float, float]]:
    if not (checkpoint / "model.safetensors").is_file():
        return MEASURED
    from safetensors.torch import load_file

    stats: dict[str, list[tuple[float, float, float]]] = {}
    for name, w in load_file(str(checkpoint / "model.safetensors")).items():
        role = LAYER_INDEX.sub("", name)
        if role not in MEASURED:
            continue
        w = w.float().numpy()
        z = w / w.std(1, keepdims=True)
        kurt = float(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3)
        stats.setdefault(role, []).append((kurt, float(np.log(w.std(0)).std()), float(np.log(w.std(1)).std())))
    return {role: tuple(np.mean(v, axis=0)) for role, v in stats.items()} | {r: MEASURED[r] for r in MEASURED if r not in stats}


def synthesize(shape: tuple[int, int], stats: tuple[float, float, float], gen: np.random.Generator) -> np.ndarray:
    kurt, col_sd, row_sd = stats
    dof = min(4.0 + 6.0 / max(kurt, 0.06), 200.0)
    w = gen.standard_t(dof, size=shape).astype(np.float32)
    w *= np.exp(gen.normal(0, col_sd, size=(1, shape[1]))).astype(np.float32)
    w *= np.exp(gen.normal(0, row_sd, size=(shape[0], 1))).astype(np.float32)
    return w * 0.02


def record_model(checkpoint: Path) -> QuantizedModel:
    from pgolf.model import build_model

    torch.manual_seed(0)
    model = build_model(RECORD)
    stats = measured_stats(checkpoint)
    gen = np.random.default_rng(0)
    state = model.state_dict()
    for name, tensor in state.items():
        role = LAYER_INDEX.sub("", name)
        if role in stats and tensor.ndim == 2:
            w = synthesize(tuple(tensor.shape), stats[role], gen)
            if role == "tok_emb.weight":
                dup = gen.random(w.shape[0]) < DUPLICATE_ROWS
                base = w[0] * 0.3
                w[dup] = base + gen.normal(0, DUPLICATE_NOISE * base.std(), size=(int(dup.sum()), w.shape[1])).astype(np.float32)
            tensor.copy_(torch.from_numpy(w))
        elif tensor.is_floating_point():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    return quantize_state(state, {}, QuantizeParams(**RECORD_QUANT), model.config.model_dump(mode="json"))


def default_model(quantized: Path) -> QuantizedModel:
    from pgolf.quant.store import load_quantized

    return load_quantized(quantized)


def simsort_l1(m: np.ndarray) -> np.ndarray:
    """The record's greedy nearest-neighbour row order (L1), from row 0."""
    rows = m.astype(np.float32)
    left = np.ones(len(rows), dtype=bool)
    order = [0]
    left[0] = False
    for _ in range(len(rows) - 1):
        idx = np.flatnonzero(left)
        best = idx[np.abs(rows[idx] - rows[order[-1]]).sum(1).argmin()]
        order.append(int(best))
        left[best] = False
    return np.asarray(order, dtype=np.uint16)


def lrzip_bytes(data: bytes, lrzip: str, tmp: Path) -> tuple[int, float, float]:
    src, packed, back = tmp / "g.bin", tmp / "g.lrz", tmp / "g.out"
    src.write_bytes(data)
    started = time.perf_counter()
    subprocess.run([lrzip, "-z", "-L", "9", "-q", "-f", "-o", str(packed), str(src)], check=True, capture_output=True)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([lrzip, "-d", "-q", "-f", "-o", str(back), str(packed)], check=True, capture_output=True)
    decode_s = time.perf_counter() - started
    if back.read_bytes() != data:
        raise RuntimeError("lrzip did not round-trip")
    return packed.stat().st_size, encode_s, decode_s


def role_groups(qm: QuantizedModel) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {}
    for name, qt in qm.quantized.items():
        groups.setdefault(LAYER_INDEX.sub("", name), []).append(qt.q.numpy())
    return groups


def measure(qm: QuantizedModel, params: PackParams, lrzip: str | None) -> dict:
    started = time.perf_counter()
    packed = pack_model(qm, params)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = artifact_from_parsed(parse_artifact(packed.data))
    decode_s = time.perf_counter() - started
    expected = qm.state_dict()
    if any(not torch.equal(loaded.tensors[k], v) for k, v in expected.items()):
        raise RuntimeError("the artifact does not round-trip")
    alone = {k: v for k, v in params.model_dump().items() if k in ("distribution", "layout", "ans_clusters", "compressor")}
    # one stream per role: its bytes are comparable row by row
    per_role = packed if params.distribution == "role" else pack_model(qm, params.model_copy(update={"distribution": "role", "reference_brotli": False}))
    rows = []
    lrzip_s = [0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (role, mats) in enumerate(role_groups(qm).items()):
            symbols = np.concatenate([m.ravel() for m in mats])
            row = {"group": role, "symbols": int(symbols.size), "entropy": order0_entropy_bits(symbols) / 8, "pgolf": per_role.streams[index]["bytes"]}
            row["brotli-11"] = len(compress(symbols.tobytes(), "brotli", 11))
            if lrzip:
                perms = b""
                layout = []
                for m in mats:
                    if role in SIMSORT_ROLES:
                        order = simsort_l1(m)
                        perms += order.tobytes()
                        m = m[order]
                    layout.append(np.ascontiguousarray(m.T).tobytes())
                size, enc, dec = lrzip_bytes(b"".join(layout), lrzip, Path(tmp))
                row["lrzip-9"] = size + (len(compress(perms, "brotli", 11)) if perms else 0)
                lrzip_s[0] += enc
                lrzip_s[1] += dec
            rows.append(row)
    metrics = pack_metrics(packed, params)
    side_and_container = packed.bytes_side + packed.bytes_container
    whole = {
        "params": alone,
        "bytes_model": packed.bytes_model,
        "bytes_symbols": packed.bytes_symbols,
        "bytes_side": packed.bytes_side,
        "bytes_container": packed.bytes_container,
        "entropy_bound_bytes": metrics["entropy_bound_bytes"],
        "model_to_entropy_bound": metrics["model_to_entropy_bound"],
        "brotli11_model_bytes": sum(r["brotli-11"] for r in rows) + side_and_container,
        "lrzip9_model_bytes": sum(r["lrzip-9"] for r in rows) + side_and_container if lrzip else None,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "lrzip_encode_s": lrzip_s[0] if lrzip else None,
        "lrzip_decode_s": lrzip_s[1] if lrzip else None,
    }
    return {"rows": rows, "whole": whole}


def print_report(name: str, result: dict) -> None:
    labels = [label for label in ("pgolf", "brotli-11", "lrzip-9") if label in result["rows"][0]]
    print(f"{name}: symbols per role group (bytes, and x the group's order-0 entropy)")
    print(f"  {'group':<26} {'symbols':>10} {'entropy':>10} " + " ".join(f"{label:>20}" for label in labels))
    for row in result["rows"] + [{"group": "all", "symbols": sum(r["symbols"] for r in result["rows"]), "entropy": sum(r["entropy"] for r in result["rows"]),
                                  **{label: sum(r[label] for r in result["rows"]) for label in labels}}]:
        cells = " ".join(f"{row[label]:>10} ({row[label] / row['entropy']:.4f}x)" for label in labels)
        print(f"  {row['group']:<26} {row['symbols']:>10} {row['entropy']:>10.0f} {cells}")
    w = result["whole"]
    print(f"  artifact ({w['params']}): {w['bytes_model']} bytes = symbols {w['bytes_symbols']} + side {w['bytes_side']} + container {w['bytes_container']}")
    print(f"  / order-0 entropy bound {w['entropy_bound_bytes']:.0f}: {w['model_to_entropy_bound']:.4f}x;  / brotli-11 model {w['brotli11_model_bytes']}: {w['bytes_model'] / w['brotli11_model_bytes']:.4f}x"
          + (f";  / lrzip-9 per group model {w['lrzip9_model_bytes']}: {w['bytes_model'] / w['lrzip9_model_bytes']:.4f}x" if w["lrzip9_model_bytes"] else ""))
    print(f"  pgolf encode {w['encode_s']:.1f} s, decode {w['decode_s']:.2f} s" + (f"; lrzip encode {w['lrzip_encode_s']:.1f} s, decode {w['lrzip_decode_s']:.1f} s" if w["lrzip_encode_s"] is not None else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("default", "record"), action="append", help="default run and/or the record-size model (both if omitted)")
    parser.add_argument("--quantized", type=Path, default=Path("data/quantize"), help="the default run's quantize output")
    parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"), help="trained weights to measure statistics from")
    parser.add_argument("--pack", type=json.loads, default={}, help="PackParams fields as JSON (default: the defaults)")
    parser.add_argument("--lrzip", help="path of an lrzip binary (the baseline; not needed by pgolf)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = PackParams(**args.pack)
    results = {}
    for name in args.model or ["default", "record"]:
        qm = default_model(args.quantized) if name == "default" else record_model(args.checkpoint)
        results[name] = measure(qm, params, args.lrzip)
        print_report(name, results[name])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
