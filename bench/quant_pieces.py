"""Each quantization piece on vs off on one trained checkpoint: quantization gap and artifact bytes.

Runs the library functions the stages call (calibrate -> quantize -> pack -> sliding evaluation
of the model rebuilt from the artifact bytes), all in memory, for a list of `quantize` and
`calibrate` overrides on top of params.yaml. The gap is the artifact's sliding val_bpb minus the
checkpoint's (scored the same way, as the eval stage does); proxy is the sum over quantized
tensors of the Hessian-weighted output error tr((W - W_hat) H (W - W_hat)^T) / tr(W H W^T), with
the same Hessians (the head's included) for every row.

    python bench/quant_pieces.py [--checkpoint data/train/checkpoint] [--shards data/shards]
        [--tokenizer data/tokenizer/tokenizer.model] [--only NAME ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pgolf.bytetable import tokenizer_sha256
from pgolf.config.calibrate import CalibrateParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.sections import load_section
from pgolf.eval.methods import METHODS
from pgolf.model.checkpoint import load_model, read_checkpoint_json, read_train_param
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.load import artifact_from_parsed, model_from_artifact
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.calibrate import calibrate_hessians
from pgolf.quant.gptq import relative_output_error
from pgolf.runtime import load_val_stream


def merge(base: dict, over: dict) -> dict:
    """`base` with `over` written into it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


RECORD_K = {"attention": {"bits": 6, "k": 13.0}, "mlp": {"bits": 6, "k": 11.5}, "embedding": {"bits": 7, "k": 14.0}, "other": {"bits": 8, "k": 12.85}}
LQER = {"lowrank_rank": 4, "lowrank_top": 3, "lowrank_u_bits": 4, "lowrank_v_bits": 4, "lowrank_group": 32}
LQER_ASYM = LQER | {"lowrank_u_bits": 2}
LQER_OUT = LQER | {"lowrank_metric": "output"}
AWQ = {group: {"salient": 16} for group in ("attention", "mlp", "embedding")}  # 16 of 128 columns: the records' 64 of 512
AWQ_EMB = {"embedding": {"salient": 16}}
HEAD = {"head_hessian": True}
# (name, calibrate overrides, quantize overrides): each piece alone on top of params.yaml, then together.
CONFIGS: list[tuple[str, dict, dict]] = [
    ("defaults", {}, {}),
    ("embedding GPTQ (head Hessian)", HEAD, {}),
    ("record SDClip k per group", {}, RECORD_K),
    ("LQER r4 top3 int4 g32", {}, LQER),
    ("LQER r4 top3 u int2 / v int4", {}, LQER_ASYM),
    ("LQER r4 top3 int4, output-weighted fit", {}, LQER_OUT),
    ("AWQ-lite 1 block of 16 cols at int8", {}, AWQ),
    ("embedding GPTQ + LQER (output)", HEAD, LQER_OUT),
    ("embedding GPTQ + AWQ-lite", HEAD, AWQ),
    ("embedding GPTQ + AWQ-lite embedding only", HEAD, AWQ_EMB),
    ("embedding GPTQ + LQER (output) + AWQ-lite", HEAD, LQER_OUT | AWQ),
    ("embedding GPTQ + LQER (output) + AWQ-lite embedding only", HEAD, LQER_OUT | AWQ_EMB),
    ("all, with the records' k", HEAD, merge(RECORD_K, LQER_OUT | AWQ)),
]


def proxy_error(qm, hessians: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> float:
    """Sum over quantized tensors of the relative output error (the same Hessians for every row)."""
    state = qm.state_dict()
    return sum(relative_output_error(original[name], state[name], hessians[name]) for name in qm.quantized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--only", nargs="*", help="run only the configs whose name starts with one of these")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)

    base_cal: CalibrateParams = load_section("calibrate", args.params)
    if base_cal.seq_len is None:
        base_cal = base_cal.model_copy(update={"seq_len": read_train_param(args.checkpoint, "seq_len")})
    base_quant: QuantizeParams = load_section("quantize", args.params)
    pack_params = load_section("pack", args.params)
    eval_params = load_section("eval_sliding", args.params)
    model_config = read_checkpoint_json(args.checkpoint)["model_config"]
    model = load_model(args.checkpoint)
    state = model.state_dict()
    original = {k: v.detach().float() for k, v in state.items()}
    stream = load_val_stream(args.shards, args.tokenizer)
    meta = {"tokenizer_sha256": tokenizer_sha256(args.tokenizer)}  # what the pack stage records
    train_shard = sorted(args.shards.glob("fineweb_train_*.bin"))[0]
    started = time.perf_counter()
    checkpoint_bpb = METHODS["sliding"].gap_score(model.eval(), stream, eval_params)
    print(f"checkpoint sliding val_bpb {checkpoint_bpb:.6f} ({time.perf_counter() - started:.1f} s)", flush=True)

    rows = []
    hessian_cache: dict[str, dict[str, torch.Tensor]] = {}

    def hessians_for(cal: CalibrateParams) -> dict[str, torch.Tensor]:
        key = json.dumps(cal.model_dump(), sort_keys=True)
        if key not in hessian_cache:
            hs = calibrate_hessians(load_model(args.checkpoint), [train_shard], cal)
            hessian_cache[key] = {w: hs.hessians[g] for w, g in hs.layers.items()}
        return hessian_cache[key]

    reference = hessians_for(base_cal.model_copy(update=HEAD))  # the proxy's Hessians, head included
    for name, cal_over, quant_over in CONFIGS:
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        hessians = hessians_for(CalibrateParams.model_validate(merge(base_cal.model_dump(), cal_over)))
        quant = QuantizeParams.model_validate(merge(base_quant.model_dump(), quant_over))
        qm = quantize_state(state, hessians, quant, model_config)
        packed = pack_model(qm, pack_params, meta)
        loaded = model_from_artifact(artifact_from_parsed(parse_artifact(packed.data)), "bench")
        bpb = METHODS["sliding"].evaluate(loaded, stream, eval_params).gap_bpb
        row = {"config": name, "gap_bpb": bpb - checkpoint_bpb, "val_bpb": bpb, "bytes_model": packed.bytes_model,
               "extras_bytes": sum(g["extras_bytes"] for g in packed.groups.values()), "proxy": proxy_error(qm, reference, original)}
        rows.append(row)
        print(f"{name:58s} gap {row['gap_bpb']:+.5f}  bytes_model {row['bytes_model']:>9,d}  extras {row['extras_bytes']:>7,d}  proxy {row['proxy']:.5f}", flush=True)
    print()
    print(f"checkpoint sliding val_bpb: {checkpoint_bpb:.6f}")
    print(f"| quantization | gap (bpb) | bytes_model | vs {rows[0]['config']} | extras (packer's share) | proxy (sum rel. output err) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['gap_bpb']:+.5f} | {row['bytes_model']:,d} | {row['bytes_model'] - rows[0]['bytes_model']:+,d} | {row['extras_bytes']:,d} | {row['proxy']:.5f} |")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint_bpb": checkpoint_bpb, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
