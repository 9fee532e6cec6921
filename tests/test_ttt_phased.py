"""The records' phased TTT: evaluation order (length batches), global phases, warm A, short-document
chunks, ranks, and the legality check judged in evaluation order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import BOS, VOCAB, TinyCausalLM, byte_table, random_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.base import validate_section
from pgolf.config.eval import EvalTTTParams
from pgolf.errors import ParamsError
from pgolf.eval.bpb import ValStream, stream_from_tokens
from pgolf.eval.legality import check_legality
from pgolf.eval.lora import LaneLoRA
from pgolf.eval.methods import METHODS, ttt_legality, ttt_probe, ttt_probe_plan
from pgolf.eval.ttt import TTTRunner, document_chunks, run_ttt, ttt_document_chunks
from pgolf.eval.ttt_order import documents, evaluation_batches, evaluation_order, length_batches, phase_boundaries, rearranged

torch.set_num_threads(1)

LENGTHS = [40, 9, 27, 61, 3, 33, 12, 50, 20, 7, 44, 16]


def params(**overrides) -> EvalTTTParams:
    base = {"chunk_tokens": 8, "window": 16, "batch_docs": 3, "lr": 0.05, "steps": 1, "lora_rank": 2,
            "lora_targets": r"c_q|c_v|lm_head", "doc_order": "length"}
    return EvalTTTParams(**{**base, **overrides})


def closed_stream(lengths: list[int], seed: int = 0) -> ValStream:
    """Documents followed by a final BOS: every document's last target is a BOS, so they can be rearranged."""
    tokens = random_stream(lengths, seed=seed).tokens
    return stream_from_tokens(np.append(tokens, BOS), byte_table(), BOS)


# -- evaluation order -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(2, 60), min_size=1, max_size=30), st.integers(1, 7))
def test_length_order_is_batches_of_similar_lengths_longest_first(lengths: list[int], batch_docs: int) -> None:
    lengths = np.array(lengths)
    batches = length_batches(lengths, batch_docs)
    assert sorted(np.concatenate(batches).tolist()) == list(range(lengths.size))
    assert sum(b.size != batch_docs for b in batches) <= 1
    assert [int(lengths[b].max()) for b in batches] == sorted((int(lengths[b].max()) for b in batches), reverse=True)
    by_length = np.sort(lengths)  # each batch is a run of the sorted lengths
    assert sorted(np.concatenate([np.sort(lengths[b]) for b in sorted(batches, key=lambda b: lengths[b].min())]).tolist()) == by_length.tolist()
    assert all((np.diff(lengths[b]) >= 0).all() for b in batches)


def test_stream_order_is_the_identity() -> None:
    stream = random_stream(LENGTHS)
    assert np.array_equal(evaluation_order(stream, params(doc_order="stream")), np.arange(len(LENGTHS)))


def test_phase_boundaries_fall_after_the_batch_reaching_the_documents() -> None:
    sizes = [3, 3, 3, 3, 2]
    assert phase_boundaries(sizes, params()) == []
    assert phase_boundaries(sizes, params(global_phase_docs=4)) == [2]
    assert phase_boundaries(sizes, params(global_phase_docs=6)) == [2]
    assert phase_boundaries(sizes, params(global_phase_docs=9, global_phases=3)) == [1, 2, 3]
    assert phase_boundaries(sizes, params(global_phase_docs=100)) == []  # never after the last batch


def test_rearranged_is_a_permutation_that_moves_each_document_with_its_last_target() -> None:
    stream = closed_stream([5, 2, 7])
    ordered, source = rearranged(stream, np.array([2, 0, 1]))
    assert sorted(source.tolist()) == list(range(stream.num_tokens))
    assert np.array_equal(ordered.tokens, stream.tokens[source])
    assert [e - b for b, e in documents(ordered)] == [9, 7, 4]  # BOS, the tokens, the next BOS
    with pytest.raises(ValueError, match="ends with a BOS"):
        rearranged(random_stream([5, 2]), np.array([1, 0]))


@pytest.mark.parametrize("batch_docs", [1, 3])
def test_length_order_equals_the_stream_runner_on_the_rearranged_stream(batch_docs: int) -> None:
    model, stream = TinyCausalLM(seed=2), closed_stream(LENGTHS, seed=3)
    p = params(batch_docs=batch_docs)
    by_length = run_ttt(model, stream, p)
    ordered, source = rearranged(stream, evaluation_order(stream, p))
    in_stream_order = run_ttt(model, ordered, p.model_copy(update={"doc_order": "stream"}))
    if batch_docs == 1:
        assert np.array_equal(by_length.nll[source], in_stream_order.nll, equal_nan=True)
    else:  # lanes are filled differently: batching noise only
        assert np.allclose(by_length.nll[source][1:], in_stream_order.nll[1:], atol=1e-5)
    assert not np.array_equal(source, np.arange(source.size))


def test_length_batches_pad_less_than_stream_order() -> None:
    lengths = np.exp(np.random.default_rng(0).normal(3.5, 1.0, 60)).clip(2, 400).astype(int).tolist()  # 2..400 tokens
    model, stream = TinyCausalLM(), random_stream(lengths, seed=1)
    p = params(chunk_tokens=16, window=64, batch_docs=4, lr=0.0)
    stream_pass = run_ttt(model, stream, p.model_copy(update={"doc_order": "stream"}), adapt=False)
    length_pass = run_ttt(model, stream, p, adapt=False)
    assert length_pass.padding_fraction < 0.15 < stream_pass.padding_fraction
    assert length_pass.rounds > 0 and stream_pass.rounds > 0
    assert np.allclose(length_pass.nll[1:], stream_pass.nll[1:], atol=1e-5)


def test_width_multiple_pads_rounds_without_changing_scores() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS, seed=4)
    plain = run_ttt(model, stream, params(lr=0.0), adapt=False)
    padded = run_ttt(model, stream, params(lr=0.0, width_multiple=32), adapt=False)
    assert padded.padding_fraction > plain.padding_fraction
    assert padded.rounds == plain.rounds
    assert np.allclose(plain.nll[1:], padded.nll[1:], atol=1e-5)


# -- chunks -----------------------------------------------------------------------------------------
def test_short_documents_take_short_chunks() -> None:
    p = params(short_doc_tokens=10, short_chunk_tokens=3)
    assert [w.stop - w.score_from + 1 for w in ttt_document_chunks(0, 11, p)] == [3, 3, 3, 1]  # 10 targets: short
    assert [w.stop - w.score_from + 1 for w in ttt_document_chunks(0, 12, p)] == [8, 3]  # 11 targets: not short
    assert ttt_document_chunks(0, 11, params()) == document_chunks(0, 11, 8, 16)


def test_chunk_context_reaches_the_records_window() -> None:
    chunks = document_chunks(0, 8000, chunk_tokens=48, window=3072)
    assert max(w.length for w in chunks) == 3072
    assert all(w.length == min(3072, w.score_from + 47) for w in chunks[:-1])
    validate_section(EvalTTTParams, {"chunk_tokens": 48, "window": 3072}, "eval_ttt")


# -- global phases ----------------------------------------------------------------------------------
def test_global_phase_moves_only_later_documents_and_trains_on_scored_ones() -> None:
    model, stream = TinyCausalLM(seed=5), random_stream(LENGTHS, seed=5)
    none = run_ttt(model, stream, params())
    phased = run_ttt(model, stream, params(global_phase_docs=5, global_phases=2, global_lr=0.05, global_seq_len=16, global_batch_seqs=4))
    assert len(phased.global_phase_seconds) == 2 and phased.ledger.early_training_tokens == 0
    docs, order = documents(stream), evaluation_order(stream, params())
    first = [p for d in order[:3] for p in range(docs[d][0] + 1, docs[d][1])]  # the batch before the first phase
    later = [p for d in order[6:] for p in range(docs[d][0] + 1, docs[d][1])]
    assert np.array_equal(none.nll[first], phased.nll[first])
    assert not np.allclose(none.nll[later], phased.nll[later], atol=1e-4)
    zero = run_ttt(model, stream, params(global_phase_docs=5, global_phases=2, global_lr=0.0))
    assert np.array_equal(zero.nll, none.nll, equal_nan=True)  # a phase that learns nothing changes nothing


def test_the_frozen_reference_has_no_global_phase() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS)
    out = run_ttt(model, stream, params(global_phase_docs=5), adapt=False)
    assert out.global_phase_seconds == []


# -- warm start of A --------------------------------------------------------------------------------
def test_warm_reset_zeroes_b_and_keeps_a() -> None:
    lora = LaneLoRA(torch.nn.Linear(4, 3), lanes=2, rank=2, alpha=2.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.a.add_(1.0)
        lora.b.add_(1.0)
    learned = lora.a.detach().clone()
    lora.reset(torch.tensor([0]), keep_a=True)
    assert torch.equal(lora.a, learned) and (lora.b[0] == 0).all() and (lora.b[1] == 1).all()
    lora.reset(torch.tensor([0]))
    assert torch.equal(lora.a[0], lora.a_init[0]) and torch.equal(lora.a[1], learned[1])


def test_warm_a_carries_what_a_lane_learned_to_its_next_document() -> None:
    model, stream = TinyCausalLM(seed=6), random_stream(LENGTHS, seed=6)
    cold, warm = run_ttt(model, stream, params()), run_ttt(model, stream, params(warm_start_a=True))
    first_batch = [p for d in evaluation_order(stream, params())[:3] for p in range(documents(stream)[d][0] + 1, documents(stream)[d][1])]
    assert np.array_equal(cold.nll[first_batch], warm.nll[first_batch])
    assert not np.array_equal(cold.nll, warm.nll, equal_nan=True)


# -- legality in evaluation order -------------------------------------------------------------------
PHASED = {"global_phase_docs": 6, "global_phases": 2, "global_lr": 0.05, "global_seq_len": 16, "warm_start_a": True,
          "short_doc_tokens": 10, "short_chunk_tokens": 4}


def plan_check(model, stream: ValStream, p: EvalTTTParams, runner=TTTRunner, cuts: int = 6, seed: int = 0):
    plan = ttt_probe_plan(stream, p.model_copy(update={"legality_tokens": stream.num_tokens, "legality_cuts": cuts}))
    return plan, check_legality(plan.wrap(ttt_probe(model, plan.params, runner)), plan.stream, VOCAB, cuts, seed, "ttt", plan.spans)


def test_probe_plan_is_laid_out_in_evaluation_order_and_crosses_a_phase() -> None:
    stream = random_stream(LENGTHS * 2, seed=7)
    plan = ttt_probe_plan(stream, params(**{**PHASED, "batch_docs": 32, "global_phase_docs": 2000}))
    assert plan.source is not None and plan.stream.tokens[-1] == BOS
    assert 2 <= plan.params.batch_docs < len(documents(plan.stream))
    batches = evaluation_batches(stream.prefix(plan.stream.num_tokens), plan.params)
    assert phase_boundaries([b.size for b in batches], plan.params)
    laid_out = np.array([e - b for b, e in documents(plan.stream)])
    edges = np.cumsum([0, *[b.size for b in batches]])
    assert all((np.diff(laid_out[lo:hi]) >= 0).all() for lo, hi in zip(edges[:-1], edges[1:]))  # each batch shortest first
    assert laid_out.size == edges[-1]


@pytest.mark.parametrize("overrides", [{}, PHASED, {**PHASED, "doc_order": "stream"}, {"adapter": "sgd", "batch_docs": 1, "reset": "keep"}])
def test_legality_passes_in_evaluation_order(overrides: dict) -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS * 2, seed=8)
    report = ttt_legality(model, stream, params(**overrides, legality_tokens=stream.num_tokens, legality_cuts=6))
    assert report.passed and report.c1_max_score_change_nats == 0.0


class PhaseOnTheNextBatch(TTTRunner):
    """Deliberately leaky: the global phase also trains on the batch it is about to score."""

    def global_phase(self, scored):
        super().global_phase(evaluation_batches(self.stream, self.params)[: len(scored) + 1])


class LanesShareA(TTTRunner):
    """Deliberately leaky warm start: after every update each lane's A becomes the mean over lanes."""

    def adapt(self, rnd):
        super().adapt(rnd)
        with torch.no_grad():
            for m in self.adapter.loras:
                m.a[:] = m.a.mean(0, keepdim=True)


def test_a_global_phase_on_unscored_documents_is_caught() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS * 2, seed=8)
    _, report = plan_check(model, stream, params(**PHASED), PhaseOnTheNextBatch)
    assert not report.passed and not report.c3_score_before_update and report.c3_early_update_tokens > 0


@pytest.mark.parametrize("doc_order", ["length", "stream"])
def test_a_warm_start_leaking_across_lanes_is_caught(doc_order: str) -> None:
    model, stream = TinyCausalLM(), random_stream([30, 31, 32, 33, 34, 35] * 2, seed=9)
    p = params(warm_start_a=True, doc_order=doc_order, batch_docs=3)
    _, honest = plan_check(model, stream, p)
    _, leaky = plan_check(model, stream, p, LanesShareA, cuts=8)
    assert honest.passed
    assert not leaky.c1_causal and not leaky.passed and leaky.c3_score_before_update  # only C1 sees it


def test_the_ttt_method_reports_padding_rounds_and_phases() -> None:
    model, stream = TinyCausalLM(), random_stream(LENGTHS * 2, seed=10)
    out = METHODS["ttt"].evaluate(model, stream, params(**PHASED, legality_tokens=400))
    assert 0.0 <= out.extra["ttt_padding_fraction"] < 1.0 and out.extra["ttt_rounds"] > 0
    assert out.extra["ttt_global_phases"] == 2 and out.extra["legality"]["passed"]
    assert out.phases["global_phases"] > 0 and out.phases["legality"] > 0 and out.phases["no_ttt"] > 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"adapter": "sgd", "batch_docs": 1, "global_phase_docs": 10}, "global_phase_docs needs adapter lora"),
        ({"warm_start_a": True, "reset": "keep"}, "warm_start_a needs"),
        ({"short_doc_tokens": 10, "short_chunk_tokens": 300}, "short_chunk_tokens"),
        ({"doc_order": "random"}, "doc_order"),
        ({"width_multiple": 0}, "width_multiple"),
    ],
)
def test_bad_phased_params_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_section(EvalTTTParams, data, "eval_ttt")


# -- ranks ------------------------------------------------------------------------------------------
def _rank_worker(rank: int, world: int, init: str, out: str, phased: bool) -> None:
    from pgolf.dist import join_group, shutdown

    torch.set_num_threads(1)
    info = join_group(rank, world, rank, "cpu", init)
    overrides = {"global_phase_docs": 5, "global_lr": 0.05, "global_seq_len": 16, "global_batch_seqs": 3} if phased else {}
    outcome = run_ttt(TinyCausalLM(seed=7), random_stream(LENGTHS, seed=11), params(**overrides), info=info)
    np.save(f"{out}/{rank}.npy", np.array([outcome.result.val_bpb, outcome.ledger.early_training_tokens, outcome.rounds,
                                           int((outcome.ledger.score_counts[1:] == 1).all())]))
    shutdown(info)


@pytest.mark.parametrize("phased", [False, True])
def test_two_ranks_give_the_single_process_result(tmp_path, phased: bool) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path), phased), nprocs=2)
    overrides = {"global_phase_docs": 5, "global_lr": 0.05, "global_seq_len": 16, "global_batch_seqs": 3} if phased else {}
    one = run_ttt(TinyCausalLM(seed=7), random_stream(LENGTHS, seed=11), params(**overrides))
    for rank in range(2):
        bpb, early, rounds, once = np.load(tmp_path / f"{rank}.npy")
        assert early == 0 and once == 1 and rounds == one.rounds
        if phased:
            assert bpb == pytest.approx(one.result.val_bpb, rel=1e-6)  # the gradient summed in another order
        else:
            assert bpb == one.result.val_bpb
