"""RMSNorm against PyTorch's, its registration, and the tools that count and time normalization (notebook 08)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tinylm
from tinylm.core import count_params
from tinylm.experiments import EXPERIMENTS, find_experiments
from tinylm.model import MODEL_PRESETS, ModelConfig, Transformer, baseline_2017
from tinylm.studies.rmsnorm import BACKWARD_PREFIX, RandomTokens, attribute_time, norm_flop_share, norm_modules, normalized_per_token, profile_steps, remove_norms
from tinylm.rmsnorm import RMSNorm, rmsnorm_2017
from tinylm.training import TrainConfig, Trainer

SMALL = dict(vocab_size=50, block_size=16, n_layer=2, d_model=32, n_head=4, dropout=0.0)


def _pair(dim=48, seed=0):
    torch.manual_seed(seed)
    ours = RMSNorm(dim, eps=1e-5)
    with torch.no_grad(): ours.weight.copy_(torch.rand(dim) + 0.5)
    ref = nn.RMSNorm(dim, eps=1e-5)
    with torch.no_grad(): ref.weight.copy_(ours.weight)
    return ours, ref


def test_values_and_gradients_match_torch():
    ours, ref = _pair()
    x = (torch.randn(2, 5, 48) * 3 + 1).requires_grad_()
    dy = torch.randn(2, 5, 48)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), F.rms_norm(x, (48,), ours.weight, 1e-5), atol=1e-5, rtol=1e-5)
    g_ours = torch.autograd.grad(ours(x), (x, ours.weight), dy)
    g_ref = torch.autograd.grad(ref(x), (x, ref.weight), dy)
    for a, b in zip(g_ours, g_ref): torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bf16_input_is_computed_in_float32_and_cast_back():
    ours, _ = _pair()
    xb = (torch.randn(64, 48) * 3 + 1).bfloat16()
    y = ours(xb)
    assert y.dtype == torch.bfloat16
    exact = F.rms_norm(xb.double(), (48,), ours.weight.detach().double(), 1e-5)
    rel = ((y.double() - exact).abs() / exact.abs()).max().item()
    assert rel <= 2 ** -8                     # one rounding to bf16
    torch_bf = F.rms_norm(xb, (48,), ours.weight.detach().bfloat16(), 1e-5)
    torch.testing.assert_close(y.float(), torch_bf.float(), atol=0.05, rtol=0.02)


def test_rescaling_invariant_but_not_recentering():
    ours, _ = _pair(seed=1)
    x = torch.randn(4, 48)
    torch.testing.assert_close(ours(7 * x), ours(x), atol=1e-4, rtol=1e-4)
    assert (ours(x + 3) - ours(x)).abs().max() > 0.1
    xc = x - x.mean(-1, keepdim=True)        # zero mean: RMSNorm = LayerNorm without shift
    torch.testing.assert_close(ours(xc), F.layer_norm(xc, (48,), ours.weight, None, 1e-5), atol=1e-5, rtol=1e-5)


def test_registered_norm_and_preset():
    assert MODEL_PRESETS['rmsnorm'] is rmsnorm_2017
    cfg = rmsnorm_2017(**SMALL)
    assert cfg == baseline_2017(norm='rms', **SMALL) and cfg.norm == 'rms'
    m_rms, m_ln = Transformer(cfg), Transformer(baseline_2017(**SMALL))
    names = [n for n, _ in norm_modules(m_rms)]
    assert names == ['blocks.0.norm1', 'blocks.0.norm2', 'blocks.1.norm1', 'blocks.1.norm2']
    assert all(isinstance(m, RMSNorm) and m.eps == cfg.norm_eps for _, m in norm_modules(m_rms))
    assert count_params(m_ln)['total'] - count_params(m_rms)['total'] == 4 * 32   # LayerNorm shifts
    logits, loss = m_rms(torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16)))
    assert logits.shape == (2, 16, 50) and torch.isfinite(loss)
    with pytest.raises(ValueError, match="ModelConfig.norm='rmsnrom' is not a known norm; allowed: 'layer', 'rms'"):
        ModelConfig(norm='rmsnrom')


def test_flop_share_counts_every_norm():
    cfg = baseline_2017(vocab_size=65, block_size=32, n_layer=2, d_model=64, n_head=4)
    assert normalized_per_token(cfg) == 4 * 64                 # 2 norms x 2 layers, post-norm: no final norm
    s = norm_flop_share(cfg)
    assert s['norm_flops_per_token'] == 3 * 7 * 4 * 64
    assert norm_flop_share(cfg.replace(bias=False))['norm_flops_per_token'] == 3 * 6 * 4 * 64
    assert norm_flop_share(cfg.replace(norm='rms'))['norm_flops_per_token'] == 3 * 4 * 4 * 64
    assert s['flop_share'] == s['norm_flops_per_token'] / (s['norm_flops_per_token'] + s['matmul_flops_per_token'])


def test_remove_norms_leaves_a_working_model():
    model = Transformer(baseline_2017(**SMALL))
    remove_norms(model)
    assert norm_modules(model) == [] and isinstance(model.blocks[0].norm1, nn.Identity)
    assert model(torch.randint(0, 50, (1, 16))).shape == (1, 16, 50)


@pytest.mark.parametrize('norm,nodes_per_norm', [('layer', 1), ('rms', 6)])
def test_profiler_attributes_each_norms_backward(norm, nodes_per_norm):
    cfg = baseline_2017(norm=norm, **SMALL)
    tr = Trainer(cfg, TrainConfig(batch_size=2, block_size=16, progress=False, device='cpu'), RandomTokens(50))
    tr.train_step()
    shares = attribute_time(profile_steps(tr, 1))
    assert shares['norm_backward_nodes'] == 4 * nodes_per_norm   # 4 norms, one node each for LayerNorm
    assert 0 < shares['norm_forward'] < 1 and 0 < shares['norm_backward'] < 1
    total = sum(shares[k] for k in ('norm', 'matmul', 'attention', 'optimizer', 'other'))
    assert abs(total - 1) < 1e-9


def test_experiment_is_registered():
    exp = EXPERIMENTS['08_rmsnorm']
    assert [e.name for e in find_experiments('08')] == ['08_norm_time', '08_rmsnorm']   # the benchmark and the experiment
    assert exp.variants == {'post | layer': {}, 'post | rms': {'norm': 'rms'}, 'pre | layer': {'norm_placement': 'pre'},
                            'pre | rms': {'norm_placement': 'pre', 'norm': 'rms'}} and exp.notebook == '08_rmsnorm'
