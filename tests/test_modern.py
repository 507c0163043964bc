"""The parallel block, the gpt2 and modern presets, parameter matching and the experiments of notebook 14."""
import math

import pytest
import torch
from torch import nn

import tinylm
from tinylm.core import count_params
from tinylm.experiments import EXPERIMENTS, plan
from tinylm.model import BLOCKS, MODEL_PRESETS, ModelConfig, Transformer, baseline_2017
from tinylm.modern import GPT2_FIELDS, MODERN_FIELDS, ParallelBlock, ffn_width_to_match, gpt2, modern_kv_heads, param_counts, param_matched
from tinylm.modern import modern_recipe as modern


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_parallel_block_is_the_formula():
    torch.manual_seed(0)
    cfg = modern(vocab_size=40, block_size=16, n_layer=2, d_model=32, n_head=4, norm_placement='parallel')
    assert BLOCKS['parallel'] is ParallelBlock
    blk = ParallelBlock(cfg)
    with torch.no_grad():
        for p in blk.parameters(): p.normal_(0, 0.2)
    x = torch.randn(2, 9, 32)
    h = _rms(x, blk.norm1.weight, cfg.norm_eps)
    torch.testing.assert_close(blk(x), x + blk.attn(h) + blk.ffn(h), atol=1e-5, rtol=1e-5)
    # and not the serial block with the same weights
    s = x + blk.attn(h)
    assert (blk(x) - (s + blk.ffn(_rms(s, blk.norm1.weight, cfg.norm_eps)))).abs().max() > 1e-2


def test_parallel_model_has_one_norm_fewer_and_a_final_norm():
    cfg = modern(vocab_size=40, block_size=16, n_layer=3, d_model=32, n_head=4)
    par, ser = Transformer(cfg.replace(norm_placement='parallel')), Transformer(cfg)
    assert count_params(ser)['total'] - count_params(par)['total'] == 3 * 32
    assert not isinstance(par.norm_f, nn.Identity)
    idx = torch.randint(0, 40, (2, 16))
    logits, loss = par(idx, idx)
    assert logits.shape == (2, 16, 40) and math.isfinite(loss.item())


def test_parallel_block_with_kv_cache_matches_full_forward():
    from tinylm.generation import KVCache
    torch.manual_seed(1)
    model = Transformer(modern(vocab_size=40, block_size=16, n_layer=2, d_model=32, n_head=4, norm_placement='parallel')).eval()
    idx = torch.randint(0, 40, (2, 10))
    cache = KVCache.for_model(model, 2)
    steps = [model(idx[:, :6], cache=cache)] + [model(idx[:, t:t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), model(idx), atol=1e-5, rtol=1e-5)


def test_gpt2_preset_fields():
    c = gpt2()
    assert {k: getattr(c, k) for k in GPT2_FIELDS} == GPT2_FIELDS
    diff = {k: v for k, v in c.to_dict().items() if baseline_2017().to_dict()[k] != v}
    assert diff == dict(norm_placement='pre', ffn='gelu_tanh', position='learned', scale_embeddings=False)
    assert (c.norm, c.bias, c.tie_embeddings, c.dropout, c.norm_eps) == ('layer', True, True, 0.1, 1e-5)
    assert MODEL_PRESETS['gpt2'] is gpt2


def test_modern_preset_fields_and_kv_rule():
    c = modern()
    assert {k: getattr(c, k) for k in MODERN_FIELDS} == MODERN_FIELDS
    assert (c.norm_placement, c.norm, c.bias, c.ffn, c.position, c.kv_heads) == ('pre', 'rms', False, 'swiglu', 'rope', c.n_head // 2)
    assert (c.n_kv_head, c.tie_embeddings, c.scale_embeddings, c.dropout, c.qk_norm) == (2, False, False, 0.0, 'none')
    assert [modern_kv_heads(h) for h in (1, 2, 3, 4, 8, 12)] == [1, 1, 3, 2, 4, 6]
    assert modern(n_head=8).kv_heads == 4 and modern(n_head=8, n_kv_head=2).kv_heads == 2
    assert modern(qk_norm='rms').qk_norm == 'rms'
    with pytest.raises(ValueError, match='n_kv_head=3 must divide n_head=8'):
        modern(n_head=8, n_kv_head=3)


def test_param_counts_match_the_formulas():
    d, L, V = 128, 4, 65
    sizes = dict(vocab_size=V, block_size=128, n_layer=L, n_head=4, d_model=d, tie_embeddings=False)
    base = param_counts(baseline_2017(**sizes))
    assert base['non_embedding'] == L * (12 * d * d + 13 * d) + V * d
    assert base == count_params(Transformer(baseline_2017(**sizes)))      # meta-device count = real count
    g = param_counts(gpt2(**sizes))
    assert g['non_embedding'] == base['non_embedding'] + 2 * d                 # the final LayerNorm
    assert g['embedding'] == base['embedding'] + 128 * d                       # the learned position table
    m = modern(**sizes)
    assert param_counts(m)['non_embedding'] == L * (3 * d * d + 3 * d * m.ffn_width + 2 * d) + d + V * d


def test_param_matched_preset():
    sizes = dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, d_model=128, tie_embeddings=False)
    matched = MODEL_PRESETS['modern_matched'](**sizes)
    assert matched.d_ff == 388 and matched.ffn == 'swiglu'
    ref = param_counts(baseline_2017(**sizes))['non_embedding']
    n = param_counts(matched)['non_embedding']
    assert abs(n - ref) <= 4 * 3 * 128 // 2 + 128  # within half an FFN unit (3 d L parameters) plus the final norm
    assert ffn_width_to_match(modern(**sizes), baseline_2017(**sizes)) == 388
    with pytest.raises(ValueError, match='d_ff=5 cannot be set on a parameter-matched preset'):
        MODEL_PRESETS['modern_matched'](d_ff=5)
    total = param_matched('gpt2', key='total')(**sizes)                # GPT-2 paying for its position table with FFN width
    assert abs(param_counts(total)["total"] - param_counts(baseline_2017(**sizes))["total"]) <= 4 * (2 * 128 + 1) // 2


def test_experiments_are_registered_and_plan_as_stated():
    for name, n in (('14_modern', 3), ('14_blocks', 2), ('14_tied', 2)):
        assert name in EXPERIMENTS and len(EXPERIMENTS[name].variants) == n
    specs = {s.key: s for s in plan(EXPERIMENTS['14_modern'], 'cpu', vocab_size=65)}
    assert len(specs) == 9 and EXPERIMENTS['14_modern'].tune_lr                # 3 variants x 3 seeds, each at its best LR
    assert all(s.model.dropout == 0.0 and not s.model.tie_embeddings for s in specs.values())
    assert specs['gpt2/seed=1'].model.position == 'learned' and specs['modern/seed=1'].model.d_ff == 196
    tied = {s.variant: s.model for s in plan(EXPERIMENTS['14_tied'], 'cpu', vocab_size=65)}
    assert tied['tied'].tie_embeddings and not tied['untied'].tie_embeddings
    blocks = {s.variant: s.model for s in plan(EXPERIMENTS['14_blocks'], 'cpu', vocab_size=65)}
    assert (blocks['serial'].norm_placement, blocks['parallel'].norm_placement) == ('pre', 'parallel')


def test_tied_modern_model_shares_one_tensor():
    m = Transformer(modern(vocab_size=40, block_size=16, n_layer=1, d_model=32, n_head=4, tie_embeddings=True))
    assert m.lm_head.weight is m.tok_emb.weight
    import tinylm.modern as module                  # the module, not shadowed by the preset function
    assert module.modern_recipe is modern and MODEL_PRESETS['modern'] is modern
