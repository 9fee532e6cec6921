"""Score-first TTT: exact no-update equivalence, lane independence, and the legality check (C1-C4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import BOS, VOCAB, TinyCausalLM, byte_table, random_stream

from pgolf.config.base import validate_section
from pgolf.config.eval import EvalTTTParams
from pgolf.errors import ParamsError
from pgolf.eval.bpb import ValStream, stream_from_tokens, token_nll
from pgolf.eval.legality import check_legality, perturb_from
from pgolf.eval.methods import ttt_probe
from pgolf.eval.ttt import TTTOutcome, TTTRunner, document_chunks, run_ttt

torch.set_num_threads(1)

LENGTHS = [40, 9, 0, 27, 61, 3]


def params(**overrides) -> EvalTTTParams:
    base = {"chunk_tokens": 8, "window": 16, "batch_docs": 3, "lr": 0.05, "steps": 2, "lora_rank": 2, "lora_targets": r"c_q|c_v|lm_head"}
    return EvalTTTParams(**{**base, **overrides})


def repeating_stream(seed: int = 0) -> ValStream:
    """Documents that each repeat a short random phrase: learnable within a document."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[BOS], np.tile(rng.integers(4, VOCAB, size=5), 10)]) for _ in range(4)]
    return stream_from_tokens(np.concatenate(docs), byte_table(), BOS)


@pytest.mark.parametrize("adapter", ["lora", "sgd"])
@pytest.mark.parametrize("reset", ["document", "keep"])
def test_zero_lr_reproduces_the_frozen_scoring_exactly(adapter: str, reset: str) -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS, seed=5)
    p = params(adapter=adapter, reset=reset, lr=0.0, batch_docs=1 if adapter == "sgd" else 3)
    frozen = run_ttt(model, stream, p, adapt=False)
    zero = run_ttt(model, stream, p)
    assert np.array_equal(frozen.nll, zero.nll, equal_nan=True)
    assert frozen.result.val_bpb == zero.result.val_bpb


def test_frozen_chunked_scoring_equals_brute_force() -> None:
    model, stream = TinyCausalLM(seed=1), random_stream(LENGTHS, seed=6)
    p = params(chunk_tokens=5, window=12)
    out = run_ttt(model, stream, p, adapt=False)
    tokens = torch.from_numpy(stream.tokens)
    with torch.no_grad():
        for p_ in range(1, stream.num_tokens):
            begin = int(np.flatnonzero(stream.tokens[:p_] == BOS)[-1])
            chunk_stop = begin + 5 * -(-(p_ - begin) // 5)  # the last target of p_'s chunk were it full
            start = max(begin, chunk_stop - 12)  # never from where the document ends (a later BOS)
            logits = model(tokens[start:p_][None])[0, -1]
            assert out.nll[p_] == pytest.approx(float(token_nll(logits, tokens[p_])), abs=1e-5)
    assert out.result.scored_tokens == stream.num_tokens - 1
    assert out.result.scored_bytes == int(stream.target_bytes.sum())


def test_document_chunks_cover_each_target_once_within_the_window() -> None:
    chunks = document_chunks(10, 38, chunk_tokens=6, window=9)
    scored = [p for w in chunks for p in range(w.score_from, w.stop + 1)]
    assert scored == list(range(11, 38))
    assert all(w.length <= 9 and w.start >= 10 and w.stop - w.score_from < 6 for w in chunks)


def test_ttt_learns_a_repeating_document() -> None:
    model, stream = TinyCausalLM(seed=3), repeating_stream()
    p = params(lr=0.05, steps=3, chunk_tokens=5)
    frozen, adapted = run_ttt(model, stream, p, adapt=False), run_ttt(model, stream, p)
    assert adapted.result.val_bpb < frozen.result.val_bpb - 0.05


def test_lora_lanes_are_independent_of_batching() -> None:
    model, stream = TinyCausalLM(seed=4), random_stream(LENGTHS, seed=7)
    one = run_ttt(model, stream, params(batch_docs=1))
    many = run_ttt(model, stream, params(batch_docs=4))
    assert np.allclose(one.nll[1:], many.nll[1:], atol=1e-5)


def test_the_model_given_is_not_modified() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_ttt(model, stream, params(adapter="sgd", batch_docs=1, reset="keep"))
    run_ttt(model, stream, params())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def runner_of(model, p: EvalTTTParams, runner_class=TTTRunner):
    return ttt_probe(model, p, runner_class)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"reset": "keep"}, {"adapter": "sgd", "batch_docs": 1}, {"adapter": "sgd", "batch_docs": 1, "reset": "keep", "momentum": 0.5}],
)
def test_legality_check_passes_on_score_first_ttt(overrides: dict) -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS, seed=8)
    report = check_legality(runner_of(model, params(**overrides)), stream, VOCAB, cuts=4, seed=0)
    assert report.passed, report
    assert report.c1_max_score_change_nats == 0.0


class AdaptThenScore(TTTRunner):
    """Deliberately leaky: trains on each chunk before scoring it."""

    def run(self) -> TTTOutcome:
        for rnd in self.rounds():
            self.adapt(rnd)
            self.score(rnd)
        from pgolf.eval.bpb import summarize

        return TTTOutcome(summarize(self.stream, self.nll, 0.0), self.nll, self.ledger)


def test_legality_check_fails_when_adapting_before_scoring() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS, seed=8)
    report = check_legality(runner_of(model, params(), AdaptThenScore), stream, VOCAB, cuts=4, seed=0)
    assert not report.passed
    assert not report.c3_score_before_update and report.c3_early_update_tokens > 0
    assert not report.c1_causal
    assert report.c2_normalized and report.c4_scored_once


def test_legality_check_fails_when_lanes_share_sgd_weights() -> None:
    """Batched full-model SGD lets a later document's update reach an earlier document's scores (C1)."""
    model, stream = TinyCausalLM(), random_stream(LENGTHS, seed=8)
    leaky = EvalTTTParams.model_construct(**{**params(adapter="sgd", batch_docs=1).model_dump(), "batch_docs": 3})
    report = check_legality(runner_of(model, leaky), stream, VOCAB, cuts=6, seed=1)
    assert not report.c1_causal and not report.passed
    assert report.c3_score_before_update  # every update used scored tokens: only C1 sees the leak


class ScoreTwice(TTTRunner):
    """Deliberately illegal: rescoring each chunk after adapting to it."""

    def run(self) -> TTTOutcome:
        for rnd in self.rounds():
            self.score(rnd)
            self.adapt(rnd)
            self.score(rnd)
        from pgolf.eval.bpb import summarize

        return TTTOutcome(summarize(self.stream, self.nll, 0.0), self.nll, self.ledger)


def test_legality_check_fails_when_rescoring() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS, seed=8)
    report = check_legality(runner_of(model, params(reset="keep"), ScoreTwice), stream, VOCAB, cuts=2, seed=0)
    assert not report.c4_scored_once and report.c4_bad_positions > 0 and not report.passed


def test_perturbation_changes_every_non_bos_token_from_the_cut() -> None:
    stream = random_stream(LENGTHS, seed=9)
    other = perturb_from(stream, 30, VOCAB, np.random.default_rng(0))
    assert np.array_equal(other.tokens[:30], stream.tokens[:30])
    is_bos = stream.tokens[30:] == BOS
    assert np.array_equal(other.tokens[30:] == BOS, is_bos)
    assert (other.tokens[30:][~is_bos] != stream.tokens[30:][~is_bos]).all()
    assert other.tokens.max() < VOCAB


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"chunk_tokens": 300, "window": 256}, "chunk_tokens"),
        ({"adapter": "sgd", "batch_docs": 4}, "batch_docs"),
        ({"lr": -1.0}, "lr"),
        ({"reset": "never"}, "reset"),
        ({"adapter": "full"}, "adapter"),
        ({"chunk": 4}, "unknown key"),
        ({"lora_targets": "(c_q"}, "lora_targets: not a valid regular expression"),
    ],
)
def test_bad_ttt_params_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_section(EvalTTTParams, data, "eval_ttt")


def test_lora_targets_matching_nothing_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match="lora_targets"):
        run_ttt(TinyCausalLM(), random_stream(LENGTHS), params(lora_targets="no_such_layer"))


def test_zero_lr_is_exact_on_the_real_gpt() -> None:
    from pgolf.config.model import ModelParams
    from pgolf.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelParams(vocab_size=VOCAB, layers=2, width=32, heads=4, kv_heads=2)).eval()
    with torch.no_grad():
        for p_ in model.parameters():
            p_.add_(torch.randn_like(p_) * 0.1)
    stream = random_stream(LENGTHS, seed=10)
    p = params(lora_targets=r"c_q|c_v", lr=0.0)
    assert np.array_equal(run_ttt(model, stream, p, adapt=False).nll, run_ttt(model, stream, p).nll, equal_nan=True)
    adapted = run_ttt(model, stream, params(lora_targets=r"c_q|c_v", lr=0.05))
    assert not np.array_equal(run_ttt(model, stream, p, adapt=False).nll, adapted.nll, equal_nan=True)
