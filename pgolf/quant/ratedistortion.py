"""Quantization on the rate-distortion frontier (issue 19): the settings with the least distortion
at a byte budget (`quantize.target_bytes`), and the curve of them per method (`pgolf rd`).

A *setting* is one (bits, k) per tensor group; every other quantize param stays as given.
Proxy (GPTQ's objective, made relative): a quantized matrix W with calibration Hessian H scores
d = tr(E H E^T) / tr(W H W^T), E = W - W_hat; without a Hessian (the tied embedding without
`calibrate.head_hessian`) H = I, the relative weight error. Component `embedding_lookup` is the
embedding's relative weight error: the lookup role of a tied embedding, unseen by a head Hessian.
The proxy is sum_c fit_weights.c * (sum of d over component c); `pgolf rd` fits the weights to
measured quantization gaps (non-negative least squares, no intercept), so the proxy predicts the gap.

Bytes: a group's symbol streams are coded exactly as the packer codes them (stream units, layout,
row references, coders), so they add up over groups; scales, passthrough tensors, container and
code add a near-constant offset, measured by packing whole models. Frontier: per group the
Pareto points (bytes, weighted d) over fit_bits x the k grid (and the group's own setting), then
their Pareto sum over groups: increasing estimated bytes, strictly decreasing proxy. The fit
(`fit_index`, `pgolf.quant.stage.fit_to_budget`) takes the frontier point with the most bytes
whose packed size fits the target; the fine k grid lets it land close under the target.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.optimize import nnls

from pgolf.config.pack import PackParams
from pgolf.config.quantize import FitWeights, QuantizeParams
from pgolf.pack.entropy import order0_entropy_bits
from pgolf.pack.pack import STREAM_UNITS, pack_model, stream_candidates
from pgolf.pack.reference_fit import fit_references
from pgolf.quant.apply import QuantizedModel, dtype_name, quantize_state, quantize_tensor
from pgolf.quant.gptq import relative_output_error, relative_reconstruction_error
from pgolf.quant.groups import GROUPS, is_quantizable, tensor_group, unique_tensors
from pgolf.quant.scheme import QuantizedTensor

log = logging.getLogger(__name__)

LOOKUP = "embedding_lookup"
FIT_TOLERANCE = 0.001  # the fit aims to land within 0.1 % under its target
ANCHOR_EVERY = 6  # symbol bytes coded exactly at every 6th k of the grid, interpolated between
# The pack stage stores the tokenizer's sha256 (64 hex digits) in the header: a stand-in of the same
# length is packed here, and HASH_SLACK bytes of the target are left for the real one.
STAND_IN_META = {"tokenizer_sha256": hashlib.sha256(b"").hexdigest()}
HASH_SLACK = 16
K_FREE_SCALES = frozenset({"clip_search"})  # scale rules that ignore k: only bits are searched


@dataclass(frozen=True)
class Matrix:
    group: str
    w: torch.Tensor  # float32
    h: torch.Tensor | None
    dtype: str


def matrices(state: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], params: QuantizeParams) -> dict[str, Matrix]:
    """The tensors quantize_state quantizes, with the Hessian it uses for each."""
    unique, aliases = unique_tensors(state)
    out = {}
    for name, tensor in unique.items():
        if is_quantizable(tensor, params.min_numel):
            names = [name] + [alias for alias, target in aliases.items() if target == name]
            h = next((hessians[n] for n in names if n in hessians), None)
            out[name] = Matrix(tensor_group(name), tensor.detach().cpu().float(), h, dtype_name(tensor.dtype))
    return out


def by_group(mats: dict[str, Matrix]) -> dict[str, dict[str, Matrix]]:
    out: dict[str, dict[str, Matrix]] = {}
    for name, m in mats.items():
        out.setdefault(m.group, {})[name] = m
    return out


def tensor_distortion(group: str, w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor | None) -> dict[str, float]:
    """{component: d} of one matrix (see the module docstring)."""
    out = {group: relative_output_error(w, w_hat, h) if h is not None else relative_reconstruction_error(w, w_hat)}
    if group == "embedding":
        out[LOOKUP] = relative_reconstruction_error(w, w_hat)
    return out


def distortion(qts: dict[str, QuantizedTensor], mats: dict[str, Matrix]) -> dict[str, float]:
    """Sum over the quantized matrices (extras included) of their components."""
    total: dict[str, float] = {}
    for name, qt in qts.items():
        for c, d in tensor_distortion(qt.group, mats[name].w, qt.dequantize().float(), mats[name].h).items():
            total[c] = total.get(c, 0.0) + d
    return total


def proxy(components: dict[str, float], weights: FitWeights) -> float:
    return sum(getattr(weights, c) * d for c, d in components.items())


def with_settings(params: QuantizeParams, choice: dict[str, tuple[int, float]]) -> QuantizeParams:
    """`params` with each named group's bits and k replaced."""
    return params.model_copy(update={g: getattr(params, g).model_copy(update={"bits": b, "k": k}) for g, (b, k) in choice.items()})


def geometric(lo: float, hi: float, n: int) -> list[float]:
    """n values from lo to hi, geometrically spaced, rounded to 4 decimals."""
    return [round(lo * (hi / lo) ** (i / (n - 1)), 4) for i in range(n)] if n > 1 else [lo]


def symbol_bytes(qts: dict[str, QuantizedTensor], pack: PackParams) -> int:
    """Bytes of the symbol streams the packer writes for these tensors (smallest of its coders)."""
    refs = {name: fit_references(qt.q.numpy(), qt.bits) for name, qt in qts.items()} if pack.row_refs else {}
    refs = {name: found for name, found in refs.items() if found.shape[1]}
    units: dict[str, list[str]] = {}
    for name, qt in qts.items():
        units.setdefault(STREAM_UNITS[pack.distribution](name, qt.group), []).append(name)
    holder = QuantizedModel({}, qts, {}, {})
    return sum(min(map(len, stream_candidates(holder, names, pack, refs)[1].values())) for names in units.values())


@dataclass(frozen=True)
class GroupPoint:
    group: str
    bits: int
    k: float
    bytes: int  # the group's symbol streams (interpolated between anchors)
    distortion: dict[str, float] = field(compare=False)


def entropy_bytes(qts: dict[str, QuantizedTensor]) -> float:
    """Order-0 entropy of the tensors' symbols together, in bytes (at least 1: a ratio's denominator)."""
    return max(order0_entropy_bits(np.concatenate([qt.q.numpy().ravel() for qt in qts.values()])) / 8, 1.0)


def group_points(group: str, mats: dict[str, Matrix], params: QuantizeParams, pack: PackParams) -> list[GroupPoint]:
    """One group quantized at every (bits, k) of the grid (fit_bits x the k grid, plus its own
    setting): distortion, and symbol bytes exact at the anchors (every ANCHOR_EVERY-th k, the last
    and its own) and elsewhere the entropy times the exact/entropy ratio interpolated in log k."""
    spec = getattr(params, group)
    ks = [spec.k] if params.scale in K_FREE_SCALES else geometric(params.fit_k_min, params.fit_k_max, params.fit_k_steps)
    points = []
    for bits in sorted(set(params.fit_bits) | {spec.bits}):
        own = {spec.k} if bits == spec.bits else set()
        grid = sorted(set(ks) | own)
        anchors = set(grid[::ANCHOR_EVERY] + grid[-1:]) | own
        rows = []
        for k in grid:
            setting = with_settings(params, {group: (bits, k)})
            qts = {name: quantize_tensor(name, group, m.w, m.h, setting, m.dtype)[0] for name, m in mats.items()}
            rows.append((k, entropy_bytes(qts), symbol_bytes(qts, pack) if k in anchors else None, distortion(qts, mats)))
        known = [(np.log(k), exact / ent) for k, ent, exact, _ in rows if exact is not None]
        ratio = np.interp([np.log(k) for k, *_ in rows], [x for x, _ in known], [y for _, y in known])
        points += [GroupPoint(group, bits, k, exact if exact is not None else round(ent * r), d) for (k, ent, exact, d), r in zip(rows, ratio)]
    return points


def pareto(points: list[tuple[int, float, tuple]]) -> list[tuple[int, float, tuple]]:
    """The (bytes, cost, payload) points no other beats: increasing bytes, strictly decreasing cost."""
    out: list[tuple[int, float, tuple]] = []
    for point in sorted(points, key=lambda p: (p[0], p[1])):
        if not out or point[1] < out[-1][1]:
            out.append(point)
    return out


@dataclass(frozen=True)
class Setting:
    choice: tuple[GroupPoint, ...]  # one point per group
    bytes: int  # estimated: the sum of the groups' symbol bytes
    cost: float  # the weighted proxy

    def params(self, base: QuantizeParams) -> QuantizeParams:
        return with_settings(base, {p.group: (p.bits, p.k) for p in self.choice})


def frontier(points: dict[str, list[GroupPoint]], weights: FitWeights) -> list[Setting]:
    """The Pareto sum over groups of each group's Pareto points (see the module docstring)."""
    front: list[tuple[int, float, tuple]] = [(0, 0.0, ())]
    for group_pts in points.values():
        mine = pareto([(p.bytes, proxy(p.distortion, weights), (p,)) for p in group_pts])
        front = pareto([(b + pb, c + pc, choice + p) for b, c, choice in front for pb, pc, p in mine])
    return [Setting(choice, b, c) for b, c, choice in front]


def fit_index(est: Sequence[int], target: int, measure: Callable[[int], int], offset: int) -> tuple[int, int]:
    """(index, measured bytes) of the frontier point for `target`: start at the last point whose
    estimate plus `offset` fits, walk down one point while the measured bytes exceed the target,
    then up one point while the next one fits. With `est` increasing and `offset` and `measure`
    independent of the target, the index never decreases as the target grows (each step is one
    point, so no fitting point below the start is skipped), and the bytes never exceed the target.
    ValueError when even the first point does not fit."""
    i = max(int(np.searchsorted(np.asarray(est) + offset, target, side="right")) - 1, 0)
    size = measure(i)
    while size > target:
        if i == 0:
            raise ValueError(f"target {target:,d} bytes is below the smallest setting searched ({size:,d} bytes)")
        i -= 1
        size = measure(i)
    while i + 1 < len(est) and (nxt := measure(i + 1)) <= target:
        i, size = i + 1, nxt
    return i, size


@dataclass
class Packer:
    """Whole-model quantize + pack, memoized by setting: bytes_total = packed model + `code_bytes`."""

    state: dict[str, torch.Tensor]
    hessians: dict[str, torch.Tensor]
    model_config: dict
    pack: PackParams
    code_bytes: int = 0
    meta: dict = field(default_factory=lambda: dict(STAND_IN_META))
    done: dict[str, tuple[QuantizedModel, int]] = field(default_factory=dict)

    def __call__(self, params: QuantizeParams) -> tuple[QuantizedModel, int]:
        key = params.model_dump_json()
        if key not in self.done:
            qm = quantize_state(self.state, self.hessians, params, self.model_config)
            packed = pack_model(qm, self.pack.model_copy(update={"reference_brotli": False}), self.meta)
            self.done[key] = (qm, packed.bytes_model + self.code_bytes)
        return self.done[key]


def all_points(mats: dict[str, Matrix], params: QuantizeParams, pack: PackParams) -> dict[str, list[GroupPoint]]:
    return {g: group_points(g, ms, params, pack) for g, ms in by_group(mats).items()}


def estimate_offset(packer: Packer, mats: dict[str, Matrix], params: QuantizeParams) -> int:
    """Measured minus estimated bytes of `params`' own settings: what the frontier's estimate lacks."""
    qm, total = packer(params)
    return total - sum(symbol_bytes({n: qm.quantized[n] for n in ms}, packer.pack) for ms in by_group(mats).values())


# ---- the proxy calibrated on real quantization gaps, and the `pgolf rd` curve ----

def neighbours(params: QuantizeParams, groups: Sequence[str]) -> list[QuantizeParams]:
    """`params`, then each group one bit lower and one bit higher: one component moved at a time."""
    specs = {g: getattr(params, g) for g in groups}
    return [params] + [with_settings(params, {g: (b, s.k)}) for g, s in specs.items() for b in (s.bits - 1, s.bits + 1) if 2 <= b <= 8]


def calibrated_weights(rows: list[tuple[dict[str, float], float]]) -> tuple[FitWeights, float]:
    """Non-negative weights with gap ~ sum_c w_c d_c over (components, measured gap) rows, and the
    RMS error of that fit (bpb). Components never seen get weight 0."""
    names = sorted({c for comps, _ in rows for c in comps})
    a = np.array([[comps.get(c, 0.0) for c in names] for comps, _ in rows])
    w, residual = nnls(a, np.array([gap for _, gap in rows]))
    return FitWeights(**({c: 0.0 for c in FitWeights.model_fields} | {c: float(v) for c, v in zip(names, w)})), float(residual / np.sqrt(len(rows)))


@dataclass(frozen=True)
class RDMethod:
    """A line of the curve: quantize overrides; `head`: the embedding quantized with its Hessian."""

    overrides: dict
    head: bool = False


LQER = {"lowrank_rank": 4, "lowrank_top": 3, "lowrank_u_bits": 4, "lowrank_v_bits": 4, "lowrank_metric": "output"}  # the records' (#2135)
RD_METHODS: dict[str, RDMethod] = {
    "gptq": RDMethod({}),
    "gptq, head Hessian": RDMethod({}, head=True),
    "gptq, clip_search": RDMethod({"scale": "clip_search"}),
    "rtn": RDMethod({"method": "rtn"}),
    "gptq, LQER r4 top3": RDMethod(LQER),
}


def method_packer(packer: Packer, method: RDMethod) -> Packer:
    hessians = packer.hessians if method.head else {n: h for n, h in packer.hessians.items() if tensor_group(n) != "embedding"}
    return replace(packer, hessians=hessians, done={})


def spread(front: list[Setting], lo: float, hi: float, points: int) -> list[Setting]:
    """Up to `points` frontier settings with estimated bytes spread geometrically over [lo, hi]."""
    est = np.array([s.bytes for s in front])
    return [front[i] for i in sorted({int(np.abs(est - b).argmin()) for b in np.geomspace(lo, hi, points)})]


def calibrate_proxy(packer: Packer, params: QuantizeParams, gap: Callable[[QuantizedModel], float]) -> tuple[FitWeights, float, list]:
    """(weights, RMS error in bpb, rows): the proxy fitted to the real gaps of `params` and its
    one-bit neighbours (and, with a head Hessian, the embedding's with it)."""
    mats = matrices(packer.state, packer.hessians, params)
    design = [(method_packer(packer, RD_METHODS["gptq"]), p) for p in neighbours(params, sorted(by_group(mats)))]
    if any(m.h is not None for m in mats.values() if m.group == "embedding"):
        design += [(packer, p) for p in neighbours(params, ["embedding"])]
    rows = []
    for who, p in design:
        qm = who(p)[0]
        rows.append((distortion(qm.quantized, mats), gap(qm)))
        log.info("calibration point %d/%d: gap %+.5f", len(rows), len(design), rows[-1][1])
    return *calibrated_weights(rows), rows


def sweep(packer: Packer, params: QuantizeParams, gap: Callable[[QuantizedModel], float], methods: Sequence[str],
          points: int = 8, span: tuple[float, float] = (0.6, 1.6), evaluate: int = 3, weights: FitWeights | None = None) -> dict:
    """The proxy's weights (`weights`, or calibrated by `calibrate_proxy` when None), then per
    method up to `points` frontier settings over span x the bytes of `params`, each packed exactly,
    with the gap the proxy predicts and the real gap of `evaluate` of them. A head-Hessian method
    needs the embedding's Hessian (skipped without it)."""
    if weights is None:
        weights, rms, calibration = calibrate_proxy(packer, params, gap)
    else:
        rms, calibration = None, []
    mats = matrices(packer.state, packer.hessians, params)
    base = method_packer(packer, RD_METHODS["gptq"])(params)[1]
    rows = []
    for name in methods:
        who = method_packer(packer, RD_METHODS[name])
        mp = QuantizeParams.model_validate(params.model_dump() | RD_METHODS[name].overrides)
        if RD_METHODS[name].head and not set(who.hessians) & {n for n, m in mats.items() if m.group == "embedding"}:
            continue
        front = frontier(all_points(matrices(who.state, who.hessians, mp), mp, who.pack), weights)
        offset = estimate_offset(who, mats, mp)
        chosen = [s.params(mp) for s in spread(front, span[0] * base - offset, span[1] * base - offset, points)]
        evaluated = {round(j) for j in np.linspace(0, len(chosen) - 1, evaluate)} if evaluate else set()
        for i, sp in enumerate(chosen):
            qm, total = who(sp)
            d = distortion(qm.quantized, mats)
            rows.append({"method": name, "bytes_total": total, "bytes_model": total - packer.code_bytes, "gap_predicted": proxy(d, weights),
                         "gap": gap(qm) if i in evaluated else None, "settings": describe(sp, d), "distortion": d})
        log.info("%s: %d points", name, len(chosen))
    return {"weights": weights.model_dump(), "calibration_rms_bpb": rms, "base_bytes_total": base,
            "calibration": [{"distortion": d, "gap": g} for d, g in calibration], "rows": rows}


def describe(params: QuantizeParams, components: dict[str, float]) -> str:
    """'attention 6/12 mlp 5/9.5 ...': bits/k of each group present."""
    return " ".join(f"{g} {getattr(params, g).bits}/{getattr(params, g).k:g}" for g in GROUPS if g in components)
