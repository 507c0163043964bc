"Notebook 19 as a user meets it: the modular-addition data, the grokking run's measurements, random-feature regression at the interpolation threshold, and the FFN activation statistics."
import numpy as np
import pytest
import torch

import tinylm
from tinylm.dynamics import ActivationStats, activation_sparsity, eval_steps, first_step, modular_split, random_features_risk, train_modular
from tinylm.model import ModelConfig, Transformer
from tinylm.studies import dynamics as sd


def test_modular_split_covers_every_pair_once_with_the_right_answers():
    xt, yt, xv, yv = modular_split(11, 0.3, seed=2)
    pairs = torch.cat([xt, xv])[:, :2].tolist()
    assert len(pairs) == 121 and len({tuple(p) for p in pairs}) == 121 and len(yt) == round(0.3 * 121)
    assert torch.equal(torch.cat([yt, yv]), (torch.cat([xt, xv])[:, 0] + torch.cat([xt, xv])[:, 1]) % 11)
    with pytest.raises(ValueError, match='p=1 must be an integer >= 2'): modular_split(1)
    with pytest.raises(ValueError, match=r'train_fraction=0 must be in \(0, 1\)'): modular_split(7, 0)


def test_a_short_run_memorizes_and_measures_on_a_log_grid():
    r = train_modular(p=13, train_fraction=0.5, weight_decay=1.0, steps=300, lr=3e-3, model_overrides=dict(d_model=32, d_ff=128))
    assert [c['step'] for c in r['curve']] == eval_steps(300, 20)
    assert r['curve'][-1]['train_acc'] == 1.0 and first_step(r['curve'], 'train_acc', 0.99, stay=False) is not None
    assert r['n_train'] + r['n_val'] == 169


def test_random_features_interpolate_from_n_features_and_peak_there():
    rows = {r['width']: r for r in random_features_risk(n_train=30, d=8, widths=(5, 30, 300), seed=1)}
    assert rows[30]['train_mse'] < 1e-12 and rows[300]['train_mse'] < 1e-12 and rows[5]['train_mse'] > 1e-3
    assert rows[30]['test_mse'] > rows[5]['test_mse'] and rows[30]['test_mse'] > rows[300]['test_mse']
    ridge = {r['width']: r for r in random_features_risk(n_train=30, d=8, widths=(5, 30, 300), ridge=0.1, seed=1)}
    assert ridge[30]['test_mse'] < rows[30]['test_mse'] and ridge[30]['beta_norm'] < rows[30]['beta_norm']


def test_activation_statistics_count_relu_zeros_and_refuse_gated_ffns():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=20, block_size=8, n_layer=1, d_model=16, n_head=2, dropout=0.0))
    with torch.no_grad(): m.blocks[0].ffn.up_proj.bias.fill_(-100.0)   # every pre-activation negative: ReLU zeroes all
    s = activation_sparsity(m, torch.randint(0, 20, (2, 8)))
    assert s['zero_share'] == [1.0] and set(s['frequency'][0]) == {0.0}
    gated = Transformer(ModelConfig(vocab_size=20, block_size=8, n_layer=1, d_model=16, n_head=2, ffn='swiglu'))
    with pytest.raises(ValueError, match='plain FFN'): ActivationStats(gated)


def test_double_descent_study_finds_its_peak_at_tiny_scale():
    res = sd.run_double_descent('tiny')
    t = sd.peak_test(res, 0.0)
    assert t['peak_width'] == res['settings']['n_train']
    assert len(sd.dd_headline(res)) == len(res['settings']['ridges'])


def test_the_studies_are_registered_and_planned(capsys):
    assert tinylm.cli.main(['experiment', '19', '--scale', 'cpu', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '19_grokking at cpu scale: a study of its own' in out and 'p=59, width 64, 8,000 full-batch steps' in out
