"""Score-first test-time training (`eval_ttt`), phased as in the records (#1610 -> #2135).

Each document is cut into chunks of `chunk_tokens` targets (`short_chunk_tokens` for documents of at
most `short_doc_tokens` targets, #2014; context: at most `window` tokens of the same document).
Documents run side by side in lanes, in *evaluation order* (`evaluation_order`): the stream's
order, lanes taken as they free up; or sorted by length into batches of `batch_docs` that start
together, the longest batch first (the records' `_build_ttt_global_batches`). Every round first
scores the next chunk of each lane with no gradient and records those scores in the `Ledger`, and
only then lets the adapter train on the chunk (a fresh forward pass). Lanes never share what they
learn (a LoRA and Adam state per lane); the `sgd` adapter changes every weight, so it runs one
lane: each chunk is adapted on only after everything before it in evaluation order was scored.

Global phases (#1610, `global_phase_docs`): at a batch boundary after the first documents in
evaluation order, SGD trains the base weights on the documents scored so far (every rank's), then
scoring resumes with fresh LoRAs on the updated base. Causality holds in evaluation order: the
result equals the stream-order run of the stream rearranged into that order (`rearranged`).

Ranks (a `pgolf.dist.DistInfo`): rank r evaluates the batches whose index is r modulo the world size; a global
phase's gradient is summed over ranks, and the scores are merged exactly at the end.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.eval import EvalTTTParams
from pgolf.dist import DistInfo, sum_in_place, sum_over_ranks
from pgolf.eval.accel import merged, summed
from pgolf.progress import progress
from pgolf.eval.bpb import EvalResult, ValStream, log_mass, new_nll_array, summarize, token_nll
from pgolf.eval.lora import LaneAdam, attach_lora
from pgolf.eval.ttt_order import DOC_ORDERS, documents, evaluation_batches, global_pieces, phase_boundaries
from pgolf.eval.windows import PAD_ID, Window, model_device

log = logging.getLogger(__name__)


class Ledger:
    """What was scored, how often, and whether training ever saw a token before its score."""

    def __init__(self, num_tokens: int, doc_starts: np.ndarray) -> None:
        self.score_counts = np.zeros(num_tokens, dtype=np.int64)
        self.opening_bos = np.zeros(num_tokens, dtype=bool)
        self.opening_bos[doc_starts] = True
        self.early_training_tokens = 0
        self.max_abs_log_mass = 0.0

    def record_scores(self, positions: np.ndarray, log_masses: Tensor) -> None:
        self.score_counts[positions] += 1
        if log_masses.numel():
            self.max_abs_log_mass = max(self.max_abs_log_mass, float(log_masses.abs().max()))

    def check_training(self, input_positions: np.ndarray, target_positions: np.ndarray, score_counts: np.ndarray | None = None) -> None:
        """Called with every position the optimizer is about to receive.

        A document's opening BOS is a given as an input (the evaluator cuts documents at BOS before
        scoring; its score as the previous document's last target belongs to another lane).
        Targets must all be scored already (`score_counts`: every rank's, else this ledger's).
        """
        counts = self.score_counts if score_counts is None else score_counts
        known_inputs = (counts[input_positions] > 0) | self.opening_bos[input_positions]
        known_targets = counts[target_positions] > 0
        self.early_training_tokens += int((~known_inputs).sum() + (~known_targets).sum())


def document_chunks(begin: int, end: int, chunk_tokens: int, window: int) -> list[Window]:
    """Chunks of a document segment [begin, end): targets in runs of chunk_tokens, context <= window.

    A chunk's context starts where a full chunk's would (from first + chunk_tokens - 1), also for a
    document's last, shorter chunk: a start taken back from the document's end would make its
    scores depend on where the next BOS falls, a token not yet scored."""
    last, chunks, first = end - 1, [], begin + 1
    while first <= last:
        stop = min(first + chunk_tokens - 1, last)
        chunks.append(Window(max(begin, first + chunk_tokens - 1 - window), stop, first))
        first = stop + 1
    return chunks


def chunk_tokens_of(targets: int, params: EvalTTTParams) -> int:
    """Targets per chunk of a document with `targets` targets: short documents take short chunks (#2014)."""
    return params.short_chunk_tokens if 0 < targets <= params.short_doc_tokens else params.chunk_tokens


def ttt_document_chunks(begin: int, end: int, params: EvalTTTParams) -> list[Window]:
    return document_chunks(begin, end, chunk_tokens_of(end - begin - 1, params), params.window)


def trained_positions(windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
    """The input and target positions an update on these windows uses (for `Ledger.check_training`)."""
    empty = [np.zeros(0, dtype=np.int64)]
    return (np.concatenate([np.arange(w.start, w.stop) for w in windows] or empty),
            np.concatenate([np.arange(w.score_from, w.stop + 1) for w in windows] or empty))


@dataclass(frozen=True)
class Round:
    lanes: Tensor  # [B] lane of each row
    chunks: list[Window]
    last: list[bool]  # the chunk is its document's last


class FrozenModel:
    """No adaptation: the reference scoring for val_bpb_no_ttt."""

    trains_last_chunk = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def begin_documents(self, lanes: Tensor) -> None:
        pass

    def select(self, lanes: Tensor) -> None:
        pass

    def train_step(self, loss: Tensor, lanes: Tensor) -> None:
        raise RuntimeError("the frozen model does not train")


class LoRAAdapter:
    """A LoRA per lane on the matched linear layers, trained by per-lane Adam."""

    def __init__(self, model: nn.Module, params: EvalTTTParams) -> None:
        self.model = copy.deepcopy(model)
        self.loras = attach_lora(self.model, params.lora_targets, params.batch_docs, params.lora_rank, params.lora_alpha, params.seed)
        self.lora_params = [p for m in self.loras for p in (m.a, m.b)]
        self.optimizer = LaneAdam(self.lora_params, params.lr, (params.beta1, params.beta2))
        self.resets = params.reset == "document"
        self.warm_a = params.warm_start_a
        self.trains_last_chunk = not self.resets

    def begin_documents(self, lanes: Tensor) -> None:
        if self.resets:
            for m in self.loras:
                m.reset(lanes, keep_a=self.warm_a)
            self.optimizer.reset(lanes)

    def fresh(self) -> None:
        """Every lane as at the start (A included): after a global phase."""
        lanes = torch.arange(self.optimizer.t.numel(), device=self.optimizer.t.device)
        for m in self.loras:
            m.reset(lanes)
        self.optimizer.reset(lanes)

    def base_parameters(self) -> list[nn.Parameter]:
        lora = {id(p) for p in self.lora_params}
        return [p for p in self.model.parameters() if id(p) not in lora]

    def select(self, lanes: Tensor) -> None:
        for m in self.loras:
            m.select(lanes)

    def train_step(self, loss: Tensor, lanes: Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step(lanes)


class SGDAdapter:
    """Plain SGD on every weight; one lane. reset=document restores the artifact's weights per document."""

    def __init__(self, model: nn.Module, params: EvalTTTParams) -> None:
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.initial = copy.deepcopy(self.model.state_dict())
        self.params = params
        self.resets = params.reset == "document"
        self.trains_last_chunk = not self.resets
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.params.lr, momentum=self.params.momentum)

    def begin_documents(self, lanes: Tensor) -> None:
        if self.resets:
            self.model.load_state_dict(self.initial)
            self.optimizer = self._optimizer()

    def select(self, lanes: Tensor) -> None:
        pass

    def train_step(self, loss: Tensor, lanes: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


Adapter = FrozenModel | LoRAAdapter | SGDAdapter


def make_adapter(model: nn.Module, params: EvalTTTParams, adapt: bool = True) -> Adapter:
    if not adapt:
        return FrozenModel(model)
    return LoRAAdapter(model, params) if params.adapter == "lora" else SGDAdapter(model, params)


class TTTRunner:
    """One pass over the stream in evaluation order: for each round, `score` then `adapt`; a
    `global_phase` at each phase boundary (see `run`)."""

    def __init__(self, adapter: Adapter, stream: ValStream, params: EvalTTTParams, info: DistInfo | None = None) -> None:
        self.adapter, self.stream, self.params, self.info = adapter, stream, params, info
        self.rank, self.world_size = (info.rank, info.world_size) if info is not None else (0, 1)
        self.device = model_device(adapter.model)
        self.tokens = torch.from_numpy(stream.tokens)
        self.ledger = Ledger(stream.num_tokens, stream.doc_starts())
        self.nll = new_nll_array(stream)
        self.docs = documents(stream)
        self.real_tokens = self.processed_tokens = self.num_rounds = 0
        self.global_phase_seconds: list[float] = []

    def rounds(self, batches: list[np.ndarray] | None = None) -> Iterator[Round]:
        """Documents enter free lanes in the order of `batches` (default: every document, in evaluation
        order); with doc_order length a batch enters only when every lane is free. Each round takes
        the next chunk of every busy lane."""
        p = self.params
        if batches is None:
            batches = evaluation_batches(self.stream, p)
        together = DOC_ORDERS[p.doc_order].together
        waiting = deque(batches if together else [np.concatenate(batches)] if batches else [])
        docs: deque[list[Window]] = deque()
        lanes: list[deque[Window]] = [deque() for _ in range(p.batch_docs)]
        while True:
            if not docs and waiting and not (together and any(lanes)):
                docs.extend(ttt_document_chunks(*self.docs[int(d)], p) for d in waiting.popleft())
            fresh = [i for i, q in enumerate(lanes) if not q][: len(docs)]
            for i in fresh:
                lanes[i] = deque(docs.popleft())
            if fresh:
                self.adapter.begin_documents(torch.tensor(fresh, device=self.device))
            busy = [i for i, q in enumerate(lanes) if q]
            if not busy:
                return
            chunks = [lanes[i].popleft() for i in busy]
            yield Round(torch.tensor(busy, device=self.device), chunks, [not lanes[i] for i in busy])

    def _forward(self, rnd: Round) -> tuple[Tensor, Tensor]:
        """Logits [B, T, V] of the round's chunks and their targets [B, T] (PAD_ID where not scored);
        T is the longest chunk rounded up to a multiple of width_multiple."""
        width = -(-max(w.length for w in rnd.chunks) // self.params.width_multiple) * self.params.width_multiple
        inputs = torch.full((len(rnd.chunks), width), PAD_ID, dtype=torch.long)
        targets = torch.full((len(rnd.chunks), width), -1, dtype=torch.long)
        for row, w in enumerate(rnd.chunks):
            inputs[row, : w.length] = self.tokens[w.start : w.stop]
            targets[row, w.score_from - w.start - 1 : w.length] = self.tokens[w.score_from : w.stop + 1]
        self.adapter.select(rnd.lanes)
        return self.adapter.model(inputs.to(self.device)), targets.to(self.device)

    def trained_rows(self, rnd: Round) -> list[int]:
        """Rows whose chunk the adapter trains on (a document's last chunk is useless once its lane resets)."""
        if isinstance(self.adapter, FrozenModel):
            return []
        return [i for i, last in enumerate(rnd.last) if self.adapter.trains_last_chunk or not last]

    def score(self, rnd: Round) -> None:
        """Score the round's chunks with no gradient and record the scores; no update happens here."""
        with torch.no_grad():
            logits, targets = self._forward(rnd)
        mask = targets >= 0
        scored = logits[mask]
        positions = np.concatenate([np.arange(w.score_from, w.stop + 1) for w in rnd.chunks])
        self.nll[positions] = token_nll(scored, targets[mask]).cpu().numpy()
        self.ledger.record_scores(positions, log_mass(scored))
        self.num_rounds += 1
        self.real_tokens += sum(w.length for w in rnd.chunks)
        self.processed_tokens += targets.numel()

    def adapt(self, rnd: Round) -> None:
        """`steps` optimizer steps on the round's chunks, each with a fresh forward pass."""
        keep = self.trained_rows(rnd)
        if not keep:
            return
        sub = Round(rnd.lanes[keep], [rnd.chunks[i] for i in keep], [rnd.last[i] for i in keep])
        self.ledger.check_training(*trained_positions(sub.chunks))
        for _ in range(self.params.steps):
            logits, targets = self._forward(sub)
            per_token = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")  # [B, T]
            mask = (targets >= 0).to(per_token.dtype)
            loss = ((per_token * mask).sum(1) / mask.sum(1)).sum()  # per-lane mean: lanes learn independently
            self.adapter.train_step(loss, sub.lanes)

    def global_phase(self, scored: list[np.ndarray]) -> None:
        """SGD on the base weights over the documents of the batches `scored` (every rank's, all scored):
        each step's pieces are split over ranks, the gradient of the step's mean token loss is
        summed over ranks. The LoRAs start fresh afterwards."""
        p, r, world = self.params, self.rank, self.world_size
        t0 = time.perf_counter()
        pieces = global_pieces([self.docs[int(d)] for d in np.concatenate(scored)], p.global_seq_len)
        steps = [pieces[i : i + p.global_batch_seqs] for i in range(0, len(pieces), p.global_batch_seqs)]
        known = summed(self.ledger.score_counts, self.info)  # every rank's scores
        self.ledger.check_training(*trained_positions([w for step in steps for w in step[r::world]]), known)
        adapter = self.adapter
        adapter.fresh()
        base = adapter.base_parameters()
        for q in adapter.lora_params:
            q.requires_grad_(False)
        for q in base:
            q.requires_grad_(True)
        optimizer = torch.optim.SGD(base, lr=p.global_lr, momentum=p.global_momentum)
        for _ in range(p.global_epochs):
            for step in steps:
                mine = step[r::world]
                optimizer.zero_grad(set_to_none=True)
                if mine:
                    rows = Round(torch.zeros(len(mine), dtype=torch.long, device=self.device), mine, [False] * len(mine))
                    logits, targets = self._forward(rows)  # lane 0, fresh: the LoRA adds exactly 0
                    per_token = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
                    ((per_token * (targets >= 0)).sum() / sum(w.stop + 1 - w.score_from for w in step)).backward()
                if world > 1:
                    for q in base:
                        if q.grad is None:
                            q.grad = torch.zeros_like(q)
                        sum_in_place(q.grad, self.info)
                if p.global_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(base, p.global_grad_clip)
                optimizer.step()
        for q in base:
            q.requires_grad_(False)
            q.grad = None
        for q in adapter.lora_params:
            q.requires_grad_(True)
        self.global_phase_seconds.append(time.perf_counter() - t0)
        log.info("ttt global phase %d: %d documents, %d sequences, %.1f s", len(self.global_phase_seconds),
                 sum(b.size for b in scored), len(pieces), self.global_phase_seconds[-1])

    def run(self) -> TTTOutcome:
        """The batches in evaluation order, this rank's share, split by the global phases; scores merged over ranks."""
        t0 = time.perf_counter()
        p, r, world = self.params, self.rank, self.world_size
        self.adapter.model.eval()
        batches = evaluation_batches(self.stream, p)
        cuts = phase_boundaries([b.size for b in batches], p) if isinstance(self.adapter, LoRAAdapter) else []
        for lo, hi in zip([0, *cuts], [*cuts, len(batches)]):
            mine = [batches[i] for i in range(lo, hi) if i % world == r]
            for rnd in progress(self.rounds(mine), "ttt", unit="round"):
                self.score(rnd)
                self.adapt(rnd)
            if hi in cuts:
                self.global_phase(batches[:hi])
        return self.outcome(time.perf_counter() - t0)

    def outcome(self, seconds: float) -> TTTOutcome:
        """Every rank's scores merged (exactly: each position scored by one rank)."""
        ledger, info = self.ledger, self.info
        if info is not None and info.distributed:
            self.nll = merged(self.nll, info)
            ledger.score_counts = summed(ledger.score_counts, info)
            masses = torch.zeros(info.world_size, dtype=torch.float64)
            masses[info.rank] = ledger.max_abs_log_mass
            ledger.max_abs_log_mass = float(sum_over_ranks(masses, info).max())
            totals = torch.tensor([ledger.early_training_tokens, self.real_tokens, self.processed_tokens, self.num_rounds], dtype=torch.float64)
            ledger.early_training_tokens, self.real_tokens, self.processed_tokens, self.num_rounds = (int(v) for v in sum_over_ranks(totals, info))
        padding = 1.0 - self.real_tokens / self.processed_tokens if self.processed_tokens else 0.0
        return TTTOutcome(summarize(self.stream, self.nll, seconds), self.nll, self.ledger, padding, self.num_rounds, self.global_phase_seconds)


@dataclass(frozen=True)
class TTTOutcome:
    result: EvalResult
    nll: np.ndarray  # per-position NLL in nats
    ledger: Ledger
    padding_fraction: float = 0.0  # 1 - real tokens / processed (padded) tokens of the scoring forward passes
    rounds: int = 0  # scoring forward passes (over every rank)
    global_phase_seconds: list[float] = field(default_factory=list)


def run_ttt(model: nn.Module, stream: ValStream, params: EvalTTTParams, adapt: bool = True, info: DistInfo | None = None) -> TTTOutcome:
    """Score-first TTT over the stream (adapt=False: the same chunked scoring, frozen), this rank's share
    under `info`, every rank's scores merged. `model` is not modified."""
    return TTTRunner(make_adapter(model, params, adapt), stream, params, info).run()
