"""The options an ablation switches, as data, and the arms they make.

An option is a name and the `dvc exp run -S key=value` overrides that switch it off (dotted params
keys); a proposal (group "proposals", issue 15) also has the overrides that switch it on.
Leave-one-out (the record stack): `pgolf ablate` runs one "all on" arm and, per selected option that
is on in the base params, one arm with that option's `off` overrides. Add-one (the proposals): one
"baseline" arm and, per selected option that is off in the base params, one arm with its `on`
overrides. `arms` builds that list, `is_on` decides which options apply.
Sources: CHALLENGE.md "The frontier" (record PR #2135 and its lineage); each entry names its PR.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pgolf.yamledit import format_value, same

ALL_ON = "all-on"  # the reference arm of a leave-one-out ablation
BASELINE = "baseline"  # the reference arm of an add-one ablation
# record: the record stack of issue 12; frontier: settings pgolf had before; proposals: issue 15 (add-one)
GROUPS = ("record", "frontier", "proposals")
BASELINE_NS = [[3.4445, -4.775, 2.0315]]  # the official Newton-Schulz triple (Polar Express off)


@dataclass(frozen=True)
class Option:
    name: str
    group: str
    off: dict[str, Any]  # dotted params key -> the value that switches the option off
    source: str
    on: dict[str, Any] | None = None  # add-one options: dotted params key -> the value that switches it on


OPTIONS: tuple[Option, ...] = (
    Option("xsa", "record", {"train.model.xsa_layers": 0}, "XSA, arXiv:2603.09078; PR #287, #478"),
    Option("recurrence", "record", {"train.model.recur_loops": 0}, "depth recurrence, PR #1344"),
    Option("parallel_lanes", "record", {"train.model.parallel_from": None}, "parallel residual lanes, PR #1530"),
    Option("skip_gates", "record", {"train.model.skip_gates": False}, "sigmoid-gated U-Net skips, PR #1089"),
    Option("ln_scale", "record", {"train.model.ln_scale": False}, "norm scale 1/sqrt(layer+1), PR #315"),
    Option("smear_gate", "record", {"train.model.smear_gate": False}, "SmearGate, PR #1667 (BOS mask #1851)"),
    Option("attn_out_gate", "record", {"train.model.attn_out_gate": False}, "sparse attention-output gate, PR #1787"),
    Option("asymmetric_softcap", "record", {"train.model.asymmetric_softcap": False}, "learned asymmetric softcap, PR #1923"),
    Option("bigram_hash", "record", {"train.model.bigram_buckets": 0}, "BigramHash embedding, PR #315"),
    Option("value_embed", "record", {"train.model.value_embed_layers": []}, "value embeddings, PR #374 stack"),
    # The packed loader needs document attention, so switching attention off switches packing off too.
    Option("doc_attention", "record", {"train.model.doc_attention": False, "train.loader": "sequential"}, "document attention, PR #1530"),
    Option("packed_loader", "record", {"train.loader": "sequential"}, "document packing loader, PR #1530"),
    Option("seq_len_schedule", "record", {"train.seq_len_schedule": []}, "progressive sequence length, PR #2014"),
    Option("qk_gain_5", "frontier", {"train.model.qk_gain_init": 1.5}, "q gain init 5.0, record 2026-04-06_SP8192_QK5"),
    Option("leaky_relu2", "frontier", {"train.model.activation": "relu2"}, "LeakyReLU(0.5)^2, record 2026-03-23_LeakyReLU"),
    Option("partial_rope", "frontier", {"train.model.rope_dims": None}, "RoPE on 16 of 64 dims, record 2026-03-21_..._PartialRoPE"),
    Option("ema", "frontier", {"train.ema_decay": 0.0}, "EMA of the weights, record 2026-03-20_11L_XSA4_EMA"),
    Option("polar_express", "frontier", {"train.optim.matrix.ns_coefficients": BASELINE_NS}, "Polar Express Newton-Schulz, record 2026-04-23_..._PolarNS"),
    Option("row_normalize", "frontier", {"train.optim.matrix.row_normalize": False}, "MuonEq-R row normalization, PR #1285"),
    Option("weight_decay", "frontier", {"train.optim.matrix.weight_decay": 0.0, "train.optim.embed.weight_decay": 0.0,
                                        "train.optim.scalar.weight_decay": 0.0}, "Muon/Adam weight decay, record 2026-03-20_..._MuonWD"),
)
# Issue 15: the five published proposals, measured add-one against the CPU baseline (docs/ablations.md).
# Where the issue asks for equal bytes the arm is sized for it: `sharing` stores the baseline's 4
# blocks and runs them as 8 layers; `hyper` at rank 4 has the dense model's parameter count at 4 x 128
# (567,888 vs 592,144); `mup` is muP at the width whose learning rates the baseline was tuned at;
# `ternary` is the record's storage (8-bit rest, trits 5 per byte).
PROPOSALS: tuple[Option, ...] = (
    Option("sharing", "proposals", {"train.model.shared_blocks": 0}, "recursive weight sharing, PR #5",
           {"train.model.shared_blocks": 4, "train.model.layers": 8}),
    Option("local_window", "proposals", {"train.model.attention_window": 0}, "local attention, PR #5",
           {"train.model.attention_window": 64}),
    Option("hyper", "proposals", {"train.model.block_linear": "dense"}, "hypernetwork linears (BioDNA), PR #16",
           {"train.model.block_linear": "hyper", "train.model.hyper_rank": 4}),
    Option("mup", "proposals", {"train.model.mup_base_width": None}, "Muon + muP, PR #4",
           {"train.model.mup_base_width": 128}),
    Option("ternary", "proposals", {"train.model.block_linear": "dense"}, "BitNet b1.58 ternary QAT + base-3 packing, record #640",
           {"train.model.block_linear": "ternary", "quantize.method": "ternary", "quantize.embedding.bits": 8,
            "pack.transform": "trits", "pack.row_refs": False}),
    Option("conv_hybrid", "proposals", {"train.model.conv_layers": []}, "short-conv/attention hybrid (Q^2 proposal, after LFM2)",
           {"train.model.conv_layers": [0, 2]}),
    # The Q^2 grids at the baseline's bytes: bits per group from {2, 4, 6, 8} fitted (pgolf.quant.ratedistortion)
    # under 338,000 bytes_total (the proposals-cpu baseline's 338,357 at seed 1337, rounded down), midrise grid,
    # a scale per 64 columns, clip-search scales, the fit weights `pgolf rd` calibrated on the default run.
    Option("q2_mix", "proposals", {"quantize.attention.grid": "symmetric"}, "2/4/6/8-bit grids with group scales (Q^2 proposal)",
           {**{f"quantize.{g}.{k}": v for g in ("attention", "mlp", "embedding") for k, v in (("grid", "midrise"), ("scale_group", 64))},
            "quantize.scale": "clip_search", "quantize.fit_bits": [2, 4, 6, 8], "quantize.target_bytes": 338_000,
            "quantize.fit_weights.attention": 0.0195, "quantize.fit_weights.mlp": 0.0757, "quantize.fit_weights.embedding": 6.44,
            "quantize.fit_weights.other": 0.0, "quantize.fit_weights.embedding_lookup": 0.603}),
)
BY_NAME = {option.name: option for option in OPTIONS + PROPOSALS}


@dataclass(frozen=True)
class Arm:
    name: str  # "all-on" or "no-<option>"
    overrides: dict[str, Any]  # dotted key -> value, on top of the base params


def select(names: list[str]) -> list[Option]:
    """Options by name or group name ("record", "frontier", "proposals", "all": every leave-one-out
    option), in table order; ValueError on an unknown name."""
    wanted: set[str] = set()
    for name in names:
        if name == "all" or name in GROUPS:
            wanted |= {o.name for o in OPTIONS + PROPOSALS if name == o.group or (name == "all" and o.on is None)}
        elif name in BY_NAME:
            wanted.add(name)
        else:
            raise ValueError(f"unknown ablation option {name!r} (known: {', '.join(BY_NAME)}; groups: {', '.join(GROUPS)}, all)")
    return [o for o in OPTIONS + PROPOSALS if o.name in wanted]


def lookup(params: dict, key: str) -> Any:
    """The value at dotted `key` of nested `params`; KeyError naming the key when absent."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def assign(params: dict, key: str, value: Any) -> None:
    """Set dotted `key` in nested `params` in place, creating mappings on the way."""
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def is_on(option: Option, resolved: dict) -> bool:
    """Whether the option is on in `resolved` (every key, defaults included): some key differs from its off value.

    KeyError when a key is unknown to the params (the option's field has not landed)."""
    return any(lookup(resolved, key) != value for key, value in option.off.items())


def partition(options: list[Option], resolved: dict) -> tuple[list[Option], list[str]]:
    """The options that make an arm in `resolved` (leave-one-out: those on; add-one: those off), and
    "<name>: why" for the others (or a key unknown to the params)."""
    on, skipped = [], []
    add_one = bool(options) and is_add_one(options)
    for option in options:
        try:
            if is_on(option, resolved) != add_one:
                on.append(option)
            else:
                skipped.append(f"{option.name}: {'already on' if add_one else 'off'} in the profile")
        except KeyError as exc:
            skipped.append(f"{option.name}: {exc.args[0]} is not a params key")
    return on, skipped


def is_add_one(options: list[Option]) -> bool:
    """Whether `options` make an add-one ablation (all have `on` overrides) rather than leave-one-out
    (none has); ValueError when they are mixed."""
    kinds = {o.on is not None for o in options}
    if len(kinds) > 1:
        raise ValueError("cannot mix add-one options (proposals) with leave-one-out options in one ablation")
    return kinds == {True}


def arms(options: list[Option]) -> list[Arm]:
    """Leave-one-out: the all-on arm, then one arm per option switching it off. Add-one: the baseline
    arm, then one arm per option switching it on."""
    if options and is_add_one(options):
        return [Arm(BASELINE, {})] + [Arm(f"with-{o.name}", dict(o.on or {})) for o in options]
    return [Arm(ALL_ON, {})] + [Arm(f"no-{o.name}", dict(o.off)) for o in options]


def run_params(base: dict, arm: Arm, seed: int) -> dict:
    """The params of one run: `base` with the arm's overrides and `train.seed` (a new mapping)."""
    params = copy.deepcopy(base)
    for key, value in {**arm.overrides, "train.seed": seed}.items():
        assign(params, key, value)
    return params


def set_args(base: dict, arm: Arm, seed: int) -> list[str]:
    """The `dvc exp run -S` arguments of one run: `key=value`, or `++key=value` for a key `base` lacks
    (DVC's Hydra parser refuses to set an absent key without it)."""
    out = []
    for key, value in {"train.seed": seed, **arm.overrides}.items():
        try:
            lookup(base, key)
            present = True
        except KeyError:
            present = False
        out += ["-S", f"{'' if present else '++'}{key}={format_value(value)}"]
    return out


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted key: leaf value}; lists and empty mappings are leaves."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def mismatch(expected: dict, recorded: dict) -> list[str]:
    """'key: recorded != expected' for each dotted key whose values differ (1 and 1.0 differ)."""
    a, b = flatten(expected), flatten(recorded)
    return [f"{k}: {b.get(k)!r} != {a.get(k)!r}" for k in sorted(set(a) | set(b)) if not same(a.get(k), b.get(k))]


def exp_name(prefix: str, arm: str, seed: int) -> str:
    """The DVC experiment name of one arm and seed (unique per baseline commit)."""
    return f"{prefix}-{arm}-s{seed}"
