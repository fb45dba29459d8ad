"""Metric code on hand-computable cases, and the sanity check that catches a broken variant."""

from __future__ import annotations

import math

import pytest
import torch

from neuronforge.neuron.numerics.emulate import perplexity_from_logits, token_nll
from neuronforge.pipeline.evaluate.metrics import Divergence, divergence, recovery, sanity_flags


def kl_divergence(reference: torch.Tensor, variant: torch.Tensor) -> float:
    return divergence([(reference, variant)]).kl


def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(2, 5, 11)
    assert kl_divergence(logits, logits.clone()) == 0.0
    assert kl_divergence(logits, logits + 3.0) == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant


def test_kl_matches_a_hand_computed_two_token_case():
    p, q = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    got = kl_divergence(p.log().view(1, 1, 2), q.log().view(1, 1, 2))
    assert got == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(q.log().view(1, 1, 2), p.log().view(1, 1, 2)) != pytest.approx(got)  # not symmetric


def test_uniform_logits_give_vocab_sized_perplexity():
    ids = torch.randint(0, 7, (3, 6))
    assert perplexity_from_logits(torch.zeros(3, 6, 7), ids) == pytest.approx(7.0)
    assert token_nll(torch.zeros(3, 6, 7), ids).shape == (3, 5)


def test_perplexity_uses_the_next_token():
    ids = torch.tensor([[0, 1, 2]])
    logits = torch.full((1, 3, 3), -30.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 0.0  # position t predicts ids[t+1] with certainty
    assert perplexity_from_logits(logits, ids) == pytest.approx(1.0)
    assert perplexity_from_logits(logits, torch.tensor([[0, 2, 1]])) > 1e3


def test_top1_agreement_counts_matching_argmax():
    ref = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    var = torch.tensor([[[0.0, 2.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    assert divergence([(ref, var)]).agreement == 0.5
    assert divergence([(ref, ref)]).agreement == 1.0


def test_recovery_of_the_reference_is_100_percent_and_higher_is_better():
    assert recovery(24.0, 24.0, higher_is_better=True) == 100.0
    assert recovery(10.0, 10.0, higher_is_better=False) == 100.0
    assert recovery(24.0, 23.0, higher_is_better=True) == pytest.approx(95.8333, rel=1e-4)
    assert recovery(10.0, 12.5, higher_is_better=False) == pytest.approx(80.0)  # worse perplexity, lower recovery
    with pytest.raises(ValueError):
        recovery(0.0, 1.0, higher_is_better=True)


def test_sanity_flags_healthy_broken_and_unquantized():
    assert sanity_flags(Divergence(kl=0.01, agreement=0.95), quantized=True) == []
    broken = sanity_flags(Divergence(kl=2.0, agreement=0.3), quantized=True)
    assert len(broken) == 2 and all("broken" in f for f in broken)
    assert "not quantized" in sanity_flags(Divergence(kl=0.0, agreement=1.0), quantized=True)[0]
    assert sanity_flags(Divergence(kl=0.0, agreement=1.0), quantized=False) == []


def test_zeroed_layer_is_flagged_on_the_tiny_model(tiny_llama_dir):
    from neuronforge.hf.folders import load_model

    ids = torch.randint(3, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    model = load_model(tiny_llama_dir)
    with torch.no_grad():
        reference = model(ids).logits.float()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        broken = model(ids).logits.float()
    measured = divergence([(reference, broken)])
    assert sanity_flags(measured, quantized=True), measured
