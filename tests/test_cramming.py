"Notebook 18 as a user meets it: the cramming preset, shapes at equal parameters, the recipe's ablations, and a 'seconds' budget timed in interleaved rounds that a resumed experiment keeps."
import dataclasses
import json
import math
import statistics

import pytest

import tinylm
from tinylm.cramming import RECIPE_CHANGES, ablations, cramming_ffn_width, reshaped
from tinylm.experiments import Experiment, run_experiment, interleaved_rates
from tinylm.model import MODEL_PRESETS, ModelConfig
from tinylm.modern import param_counts
from tinylm.studies import cramming as sc

SIZES = dict(n_layer=3, n_head=4, d_model=64, block_size=64, vocab_size=65)


def test_the_preset_is_the_recipe():
    c = ModelConfig.preset('cramming_paper', **SIZES)
    assert (c.norm_placement, c.norm, c.bias, c.ffn, c.position, c.emb_norm, c.dropout) == ('pre', 'layer', False, 'geglu', 'scaled_sinusoidal', True, 0.0)
    assert c.d_ff == cramming_ffn_width(64) == 128
    assert ModelConfig.preset('cramming', **{**SIZES, 'd_model': 96}).d_ff == 192
    assert ModelConfig.preset('cramming', **SIZES, d_ff=None).ffn_width == 168        # GeGLU's own 8/3 d, rounded to 8
    assert ModelConfig.preset('cramming', **SIZES, ffn='gelu').ffn_width == 256       # another FFN keeps its default
    with pytest.raises(ValueError, match="ffn='gelo'"): ModelConfig.preset('cramming', **SIZES, ffn='gelo')
    assert ModelConfig.preset('cramming', **SIZES) == c.replace(position='learned')   # the measured winner (18_recipe)


@pytest.mark.parametrize('n_layer', [1, 2, 6, 12])
def test_reshaped_keeps_the_parameters(n_layer):
    ref = ModelConfig.preset('cramming', **SIZES)
    c = reshaped(ref, n_layer)
    assert c.n_layer == n_layer and c.head_dim == ref.head_dim and c.n_head * c.head_dim == c.d_model
    assert param_counts(c)['non_embedding'] == pytest.approx(param_counts(ref)['non_embedding'], rel=0.01)
    assert (c.d_model > ref.d_model) == (n_layer < ref.n_layer)


def test_reshaped_without_an_ffn_and_bad_inputs():
    ref = ModelConfig.preset('cramming', **SIZES)
    c = reshaped(ref, 3, 'none')
    assert c.ffn == 'none' and c.d_model > ref.d_model
    assert param_counts(c)['non_embedding'] == pytest.approx(param_counts(ref)['non_embedding'], rel=0.1)
    assert reshaped(ref, 3) == ref
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match='must be a positive integer'): reshaped(ref, bad)
    with pytest.raises(ValueError, match='n_kv_head=None'): reshaped(ref.replace(n_kv_head=2), 3)
    with pytest.raises(ValueError, match="key='emb'"): reshaped(ref, 3, key='emb')


def test_each_ablation_undoes_one_change():
    abl = ablations()
    assert list(abl) == ['crammed'] + [c['variant'] for c in RECIPE_CHANGES.values()]
    ref = ModelConfig.preset('cramming_paper', **SIZES).to_dict()
    for change in RECIPE_CHANGES.values():
        over = {k: v for k, v in abl[change['variant']].items() if k != 'preset'}
        cfg = MODEL_PRESETS['cramming_paper'](**SIZES, **over).to_dict()
        changed = {k for k in cfg if cfg[k] != ref[k]}
        assert changed and changed <= set(change['undo']), (change, changed)


def test_the_study_presets():
    shapes = [MODEL_PRESETS[o['preset']](**SIZES) for o in sc.SHAPES_EXPERIMENT.variants.values()]
    assert [c.n_layer for c in shapes] == [3, 1, 2, 6, 12, 3] and shapes[-1].ffn == 'none'
    n = [param_counts(c)['non_embedding'] for c in shapes]
    assert max(n[:-1]) / min(n[:-1]) < 1.01
    widths = [MODEL_PRESETS[o['preset']](**SIZES) for o in sc.SIZES_EXPERIMENT.variants.values()]
    assert [c.d_model for c in widths] == [32, 48, 64, 96, 128] and [c.d_ff for c in widths] == [64, 96, 128, 192, 256]


def test_interleaved_rates_checks_its_arguments():
    with pytest.raises(ValueError, match="clock='cpu'"): interleaved_rates({}, clock='cpu')
    with pytest.raises(ValueError, match='rounds=0 must be a positive integer'): interleaved_rates({}, rounds=0)


def test_a_seconds_budget_is_timed_once_and_kept(tmp_path, monkeypatch):
    exp = Experiment('cram_t', {'crammed': {'preset': 'cramming'}, 'wide': {'preset': 'cramming', 'd_model': 64}},
                     budget='seconds', scales={'tiny': dict(seconds=0.2)})
    scale = dataclasses.replace(tinylm.experiments.SCALES['tiny'], persist=True)
    monkeypatch.setitem(tinylm.experiments.SCALES, 'tiny', scale)
    res = run_experiment(exp, 'tiny', results=tmp_path, verbose=False)
    timing = res['timing']
    assert timing['rounds'] == 9 and all(len(t['rounds']) == 9 for t in timing['variants'].values())
    for v, t in timing['variants'].items():
        assert res['runs'][f'{v}/seed=1']['final']['steps'] == max(1, int(0.2 * t['steps_per_s']))
    stored = json.loads((tmp_path / 'cram_t-tiny.json').read_text())
    assert stored['timing'] == timing
    # resumed: the stored timing sets the steps, so every run is already done
    again = run_experiment(exp, 'tiny', results=tmp_path, verbose=False)
    assert again['timing'] == timing and again['runs'] == res['runs']
    # a subset of the variants keeps the file's timing too (how one experiment runs on two cores)
    sub = dataclasses.replace(exp, variants={'wide': exp.variants['wide']})
    assert run_experiment(sub, 'tiny', results=tmp_path, verbose=False)['timing'] == timing
    tp = sc.throughput(res, 'crammed')
    assert tp['crammed']['ratio'] == 1.0
    w, c = timing['variants']['wide']['rounds'], timing['variants']['crammed']['rounds']
    assert tp['wide']['ratio'] == pytest.approx(math.exp(statistics.fmean(math.log(a / b) for a, b in zip(w, c))))   # paired by round
    assert tp['wide']['lo'] <= tp['wide']['ratio'] <= tp['wide']['hi']
    short = min(res['runs'].values(), key=lambda r: r['final']['tokens'])   # the run that saw the fewest tokens
    at = sc.loss_at_tokens(res, short['final']['tokens'])
    assert at[short['variant']]['ends_here'] and at[short['variant']]['mean'] == short['final']['sample_val_loss']
    with pytest.raises(ValueError, match='not at 99,999,999'): sc.loss_at_tokens(res, 99_999_999)
    table = sc.budget_table(res)
    assert '| **crammed** |' in table and f"{timing['variants']['wide']['tokens_per_s']:,.0f}" in table
    with pytest.raises(ValueError, match="x='steps'"): sc.plot_budget(res, 'steps')


def test_a_timing_without_the_variant_is_refused():
    exp = Experiment('cram_e', {'a': {'preset': 'cramming'}, 'b': {'preset': 'cramming', 'bias': True}}, budget='seconds')
    specs = tinylm.experiments.plan(exp, 'tiny')
    timing = dict(variants={'a': dict(steps_per_s=10.0)})
    with pytest.raises(ValueError, match="no rate for 'b'; it times 'a'"):
        tinylm.experiments.seconds_budget(specs, exp, 'tiny', None, timing)


def test_throughput_needs_a_timing():
    with pytest.raises(ValueError, match='no interleaved timing'):
        sc.throughput(dict(experiment='x', reference='a', variants=['a'], runs={}))
