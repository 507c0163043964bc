"""Bias-free models (notebook 09): parameter accounting and the exact redundancies of some biases."""
import pytest
import torch
from torch import nn

import tinylm
from tinylm.attention import MultiHeadAttention
from tinylm.core import count_params
from tinylm.experiments import EXPERIMENTS, find_experiments, plan
from tinylm.model import MODEL_PRESETS, Transformer, baseline_2017
from tinylm.studies.no_bias import bias_breakdown, bias_params
from tinylm.no_bias import no_bias_2017

CPU = dict(vocab_size=65, block_size=128, n_layer=4, d_model=128, n_head=4)


def test_preset_has_no_bias_anywhere():
    assert MODEL_PRESETS['no_bias'] is no_bias_2017
    cfg = no_bias_2017(**CPU)
    assert cfg == baseline_2017(bias=False, **CPU)
    model = Transformer(cfg)
    assert [n for n, _ in model.named_parameters() if n.endswith('bias')] == []
    assert model.blocks[0].norm1.bias is None and model.blocks[0].attn.q_proj.bias is None


@pytest.mark.parametrize('overrides', [{}, {'norm': 'rms'}, {'n_layer': 2, 'd_model': 64, 'd_ff': 100}])
def test_bias_params_is_the_difference_in_parameters(overrides):
    cfg = baseline_2017(**{**CPU, **overrides})
    diff = count_params(Transformer(cfg))['total'] - count_params(Transformer(cfg.replace(bias=False)))['total']
    assert bias_params(cfg) == diff
    assert bias_params(cfg.replace(bias=False)) == 0


def test_bias_breakdown_of_the_baseline():
    d, L = 128, 4
    assert bias_breakdown(baseline_2017(**CPU)) == {'q_proj': d * L, 'k_proj': d * L, 'v_proj': d * L, 'o_proj': d * L,
                                                      'up_proj': 4 * d * L, 'down_proj': d * L, 'norm1': d * L, 'norm2': d * L}
    assert bias_params(baseline_2017(**CPU)) == 11 * d * L == 5632


def _attention(seed=0):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(24, 3).eval()
    for p in mha.parameters(): nn.init.normal_(p, std=0.3)
    return mha


def test_key_bias_cancels_in_the_softmax_and_gets_no_gradient():
    mha = _attention()
    x = torch.randn(2, 7, 24)
    kp = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    y, y_pad = mha(x), mha(x, key_padding=kp)
    with torch.no_grad(): mha.k_proj.bias.normal_(std=5.0)
    torch.testing.assert_close(mha(x), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mha(x, key_padding=kp), y_pad, atol=1e-5, rtol=1e-5)
    mha(x).square().sum().backward()
    assert mha.k_proj.bias.grad.abs().max() < 1e-6 * mha.q_proj.bias.grad.abs().max()


def test_value_bias_folds_into_the_output_bias_but_query_bias_matters():
    mha = _attention(1)
    x = torch.randn(2, 7, 24)
    y = mha(x)
    with torch.no_grad():
        mha.o_proj.bias += mha.o_proj.weight @ mha.v_proj.bias
        mha.v_proj.bias.zero_()
    torch.testing.assert_close(mha(x), y, atol=1e-5, rtol=1e-5)
    with torch.no_grad(): mha.q_proj.bias.normal_(std=3.0)
    assert (mha(x) - y).abs().max() > 0.1


def test_norm_shift_folds_into_the_next_linear_bias():
    torch.manual_seed(2)
    ln, lin = nn.LayerNorm(16), nn.Linear(16, 8)
    for p in (*ln.parameters(), *lin.parameters()): nn.init.normal_(p)
    ln0, lin0 = nn.LayerNorm(16, bias=False), nn.Linear(16, 8)
    with torch.no_grad():
        ln0.weight.copy_(ln.weight); lin0.weight.copy_(lin.weight); lin0.bias.copy_(lin.bias + lin.weight @ ln.bias)
    x = torch.randn(5, 16)
    torch.testing.assert_close(lin0(ln0(x)), lin(ln(x)), atol=1e-5, rtol=1e-5)


def test_experiments_are_registered():
    assert {e.name for e in find_experiments('09')} == {'09_no_bias', '09_no_bias_lr'}
    specs = plan(EXPERIMENTS['09_no_bias_lr'], 'cpu', 65)
    assert len(specs) == 18 and {s.train.warmup_steps for s in specs} == {0} and {s.seed for s in specs} == {1, 2, 3}
    assert sorted({(s.model.bias, s.train.lr) for s in specs}) == [(False, 0.008), (False, 0.016), (False, 0.032),
                                                                  (True, 0.008), (True, 0.016), (True, 0.032)]
    assert len(plan(EXPERIMENTS['09_no_bias'], 'cpu', 65)) == 6 and EXPERIMENTS['09_no_bias'].tune_lr
