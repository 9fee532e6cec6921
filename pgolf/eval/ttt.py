"""Score-first test-time training (`eval_ttt`).

Each document is cut into chunks of `chunk_tokens` targets (context: at most `window` tokens of
the same document). Documents run side by side in lanes, taken in stream order as lanes free up.
Every round first scores the next chunk of each lane with no gradient and records those scores in
the `Ledger`, and only then lets the adapter train on the chunk (a fresh forward pass). Lanes never share what they
learn (a LoRA and Adam state per lane); the `sgd` adapter changes every weight, so it runs one
lane: each chunk is adapted on only after everything before it in the stream was scored.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.eval import EvalTTTParams
from pgolf.progress import progress
from pgolf.eval.bpb import EvalResult, ValStream, log_mass, new_nll_array, summarize, token_nll
from pgolf.eval.lora import LaneAdam, attach_lora
from pgolf.eval.sliding import segments
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

    def check_training(self, input_positions: np.ndarray, target_positions: np.ndarray) -> None:
        """Called with every position the optimizer is about to receive.

        A document's opening BOS is a given as an input (the evaluator cuts documents at BOS before
        scoring; its score as the previous document's last target belongs to another lane).
        Targets must all be scored already.
        """
        known_inputs = (self.score_counts[input_positions] > 0) | self.opening_bos[input_positions]
        known_targets = self.score_counts[target_positions] > 0
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
        self.optimizer = LaneAdam([p for m in self.loras for p in (m.a, m.b)], params.lr, (params.beta1, params.beta2))
        self.resets = params.reset == "document"
        self.trains_last_chunk = not self.resets

    def begin_documents(self, lanes: Tensor) -> None:
        if self.resets:
            for m in self.loras:
                m.reset(lanes)
            self.optimizer.reset(lanes)

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
    """One pass over the stream: for each round, `score` then `adapt` (see `run`)."""

    def __init__(self, adapter: Adapter, stream: ValStream, params: EvalTTTParams) -> None:
        self.adapter, self.stream, self.params = adapter, stream, params
        self.device = model_device(adapter.model)
        self.tokens = torch.from_numpy(stream.tokens)
        self.ledger = Ledger(stream.num_tokens, stream.doc_starts())
        self.nll = new_nll_array(stream)

    def rounds(self) -> Iterator[Round]:
        """Documents enter free lanes in stream order; each round takes the next chunk of every busy lane."""
        p = self.params
        docs = deque(document_chunks(b, e, p.chunk_tokens, p.window) for b, e in segments(self.stream, doc_bounded=True))
        lanes: list[deque[Window]] = [deque() for _ in range(p.batch_docs)]
        while True:
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
        """Logits [B, T, V] of the round's chunks and their targets [B, T] (PAD_ID where not scored)."""
        width = max(w.length for w in rnd.chunks)
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

    def adapt(self, rnd: Round) -> None:
        """`steps` optimizer steps on the round's chunks, each with a fresh forward pass."""
        keep = self.trained_rows(rnd)
        if not keep:
            return
        sub = Round(rnd.lanes[keep], [rnd.chunks[i] for i in keep], [rnd.last[i] for i in keep])
        self.ledger.check_training(
            np.concatenate([np.arange(w.start, w.stop) for w in sub.chunks]),
            np.concatenate([np.arange(w.score_from, w.stop + 1) for w in sub.chunks]),
        )
        for _ in range(self.params.steps):
            logits, targets = self._forward(sub)
            per_token = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")  # [B, T]
            mask = (targets >= 0).to(per_token.dtype)
            loss = ((per_token * mask).sum(1) / mask.sum(1)).sum()  # per-lane mean: lanes learn independently
            self.adapter.train_step(loss, sub.lanes)

    def run(self) -> TTTOutcome:
        t0 = time.perf_counter()
        self.adapter.model.eval()
        for rnd in progress(self.rounds(), "ttt", unit="round"):
            self.score(rnd)
            self.adapt(rnd)
        return TTTOutcome(summarize(self.stream, self.nll, time.perf_counter() - t0), self.nll, self.ledger)


@dataclass(frozen=True)
class TTTOutcome:
    result: EvalResult
    nll: np.ndarray  # per-position NLL in nats
    ledger: Ledger


def run_ttt(model: nn.Module, stream: ValStream, params: EvalTTTParams, adapt: bool = True) -> TTTOutcome:
    """Score-first TTT over the stream (adapt=False: the same chunked scoring, frozen). `model` is not modified."""
    return TTTRunner(make_adapter(model, params, adapt), stream, params).run()
