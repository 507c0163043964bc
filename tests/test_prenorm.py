"""Pre-norm and sandwich blocks against PyTorch and against each other, presets, and per-layer gradient norms."""
import math

import pytest
import torch
from torch import nn

import tinylm
from tinylm.core import count_params
from tinylm.model import BLOCKS, MODEL_PRESETS, ModelConfig, Transformer, baseline_2017
from tinylm.studies.prenorm import KEY_CELLS, PRENORM_GRID, PRENORM_SEEDS, PRENORM_TUNED, grad_norms_per_layer
from tinylm.prenorm import PreNormBlock, SandwichBlock, baseline_prenorm, baseline_sandwich, to_torch_prenorm_layer
from tinylm.experiments import EXPERIMENTS, find_experiments


def _randomize(module, std=0.1):
    for p in module.parameters(): nn.init.normal_(p, std=std)
    return module


@pytest.mark.parametrize('bias', [True, False])
def test_prenorm_block_equals_torch_norm_first_layer(bias):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=48, n_head=6, dropout=0.0, norm_placement='pre', bias=bias)
    block = _randomize(PreNormBlock(cfg)).eval()
    ref = to_torch_prenorm_layer(block, cfg).eval()
    assert ref.norm_first
    x = torch.randn(2, 9, 48)
    expected = ref(x, src_mask=nn.Transformer.generate_square_subsequent_mask(9), is_causal=True)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    ref.norm_first = False   # the same weights in post-norm order compute something else
    assert (ref(x, src_mask=nn.Transformer.generate_square_subsequent_mask(9), is_causal=True) - expected).abs().max() > 0.1


def test_prenorm_model_equals_torch_encoder_with_final_norm():
    torch.manual_seed(1)
    cfg = baseline_prenorm(vocab_size=50, block_size=16, n_layer=3, d_model=32, n_head=4, dropout=0.0)
    model = _randomize(Transformer(cfg)).eval()
    idx = torch.randint(0, 50, (2, 16))
    x = model.pos.embed(model.tok_emb(idx) * math.sqrt(32), torch.arange(16))
    mask = nn.Transformer.generate_square_subsequent_mask(16)
    for b in model.blocks: x = to_torch_prenorm_layer(b, cfg).eval()(x, src_mask=mask, is_causal=True)
    x = nn.functional.layer_norm(x, (32,), model.norm_f.weight, model.norm_f.bias, cfg.norm_eps)
    torch.testing.assert_close(model.hidden_states(idx), x, atol=1e-5, rtol=1e-5)


def test_sandwich_block_formula_and_reduction_to_prenorm():
    torch.manual_seed(2)
    cfg = ModelConfig(d_model=32, n_head=4, dropout=0.0, norm_placement='sandwich')
    sw = _randomize(SandwichBlock(cfg)).eval()
    x = torch.randn(2, 7, 32)
    ln = lambda m, t: nn.functional.layer_norm(t, (32,), m.weight, m.bias, cfg.norm_eps)
    h = x + ln(sw.norm1_post, sw.attn(ln(sw.norm1, x)))
    expected = h + ln(sw.norm2_post, sw.ffn(ln(sw.norm2, h)))
    torch.testing.assert_close(sw(x), expected, atol=1e-5, rtol=1e-5)
    pre = PreNormBlock(cfg).eval()
    pre.load_state_dict({k: v for k, v in sw.state_dict().items() if '_post' not in k})
    sw.norm1_post, sw.norm2_post = nn.Identity(), nn.Identity()
    torch.testing.assert_close(sw(x), pre(x))


def test_registry_presets_and_final_norm():
    assert {'post', 'pre', 'sandwich'} <= set(BLOCKS)
    assert BLOCKS['pre'].final_norm and BLOCKS['sandwich'].final_norm and not BLOCKS['post'].final_norm
    base = baseline_2017().to_dict()
    for name, fn, placement in (('prenorm', baseline_prenorm, 'pre'), ('sandwich', baseline_sandwich, 'sandwich')):
        cfg = MODEL_PRESETS[name]().to_dict()
        assert {k for k in cfg if cfg[k] != base[k]} == {'norm_placement'} and cfg['norm_placement'] == placement
        assert fn(d_model=64).d_model == 64
    with pytest.raises(ValueError, match=r"ModelConfig.norm_placement='prenorm' is not a known norm_placement; allowed: 'post', 'pre', 'sandwich'"):
        ModelConfig(norm_placement='prenorm')
    small = dict(vocab_size=40, block_size=8, n_layer=3, d_model=16, n_head=2)
    n = {p: count_params(Transformer(baseline_2017(norm_placement=p, **small)))['non_embedding'] for p in ('post', 'pre', 'sandwich')}
    assert n['pre'] - n['post'] == 2 * 16 and n['sandwich'] - n['pre'] == 3 * 4 * 16


def test_grad_norms_per_layer_matches_backward():
    torch.manual_seed(3)
    model = Transformer(baseline_sandwich(vocab_size=40, block_size=16, n_layer=3, d_model=32, n_head=4, dropout=0.0))
    x, y = torch.randint(0, 40, (2, 2, 4, 16)).unbind(0)   # 2 batches of (4, 16)
    g = grad_norms_per_layer(model, x, y)
    assert set(g) == {'attn', 'ffn', 'block'} and all(len(v) == 3 for v in g.values())
    assert all(p.grad is None for p in model.parameters())
    per_batch = []
    for i in range(2):
        model.zero_grad(); model(x[i], y[i])[1].backward()
        b = model.blocks[2]
        per_batch.append((torch.cat([p.grad.flatten() for p in b.attn.parameters() if p.ndim == 2]).norm().item(),
                          torch.cat([p.grad.flatten() for p in list(b.attn.parameters()) + list(b.ffn.parameters()) if p.ndim == 2]).norm().item()))
    assert g['attn'][2] == pytest.approx(sum(a for a, _ in per_batch) / 2, rel=1e-4)
    assert g['block'][2] == pytest.approx(sum(b for _, b in per_batch) / 2, rel=1e-4)


def test_sandwich_gradients_are_large_at_small_init():
    # the output norm makes each branch scale-invariant in its weights, so at std-0.02 init their gradients are large
    torch.manual_seed(4)
    x, y = torch.randint(0, 40, (2, 4, 16)).unbind(0)
    dims = dict(vocab_size=40, block_size=16, n_layer=2, d_model=32, n_head=4, dropout=0.0)
    g = {p: grad_norms_per_layer(Transformer(baseline_2017(norm_placement=p, **dims)), x, y)['block'] for p in ('pre', 'sandwich')}
    assert min(g['sandwich']) > 5 * max(g['pre'])


def test_experiments_registered():
    assert EXPERIMENTS['07_prenorm_grid'] is PRENORM_GRID and EXPERIMENTS['07_prenorm_seeds'] is PRENORM_SEEDS
    assert {e.name for e in find_experiments('07_prenorm')} == {'07_prenorm_grid', '07_prenorm_seeds', '07_prenorm_tuned'}
    assert PRENORM_TUNED.tune_lr and set(PRENORM_TUNED.variants) == {'post', 'pre', 'sandwich'}
    assert len(PRENORM_GRID.variants) == 18 and len(KEY_CELLS) == 6
    for k in KEY_CELLS: assert PRENORM_SEEDS.variants[k] == PRENORM_GRID.variants[k]
    assert PRENORM_GRID.variants['pre | lr=0.064 warmup_steps=0'] == {'norm_placement': 'pre', 'lr': 0.064, 'warmup_steps': 0}
