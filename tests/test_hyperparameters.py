"Notebook 15: schedules with a period, shape-matched presets, and the readers that turn grids and rules into verdicts."
import pytest

import tinylm  # noqa: F401  (fills every registry)
from tinylm.hyperparameters import cosine_with_period, shape_matched, wsd_schedule
from tinylm.modern import param_counts
from tinylm.studies.hyperparameters import _none_better, best_per_row
from tinylm.training import SCHEDULES, TrainConfig


def test_schedules_with_a_period():
    c = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    one = cosine_with_period(1.0)
    assert [one(s, c) for s in (0, 10, 55, 100)] == [pytest.approx(SCHEDULES['cosine'](s, c)) for s in (0, 10, 55, 100)]
    assert cosine_with_period(2.0)(100, c) == pytest.approx(0.55) and cosine_with_period(0.5)(60, c) == pytest.approx(0.1)
    assert wsd_schedule(50, c) == 1.0 and wsd_schedule(99, c) == pytest.approx(0.1)
    with pytest.raises(ValueError, match='must be a finite number > 0'): cosine_with_period(0)


def test_shape_matched_presets_keep_the_parameters():
    sizes = dict(d_model=64, n_layer=3, n_head=4, vocab_size=66, block_size=64)
    ref = param_counts(tinylm.MODEL_PRESETS['baseline_2017'](**sizes))['non_embedding']
    for kw in (dict(d_ff_ratio=1), dict(d_ff_ratio=8), dict(n_layer=12), dict(d_ff_ratio=8 / 3, ffn='swiglu')):
        cfg = shape_matched(**kw)(**sizes)
        assert abs(param_counts(cfg)['non_embedding'] / ref - 1) < 0.1, (kw, cfg)
    with pytest.raises(ValueError, match='cannot be set on a shape-matched preset'): shape_matched(d_ff_ratio=2)(d_ff=10, **sizes)


def _grid(cells: dict) -> dict:
    "A fake two-key grid result: (lr, wd) -> {seed: loss}."
    runs = {}
    for (lr, wd), per in cells.items():
        for s, x in per.items():
            v = f'weight_decay={wd:g} | lr={lr:g}'
            runs[f'{v}/seed={s}'] = dict(variant=v, seed=s, stage='compare', status='ok', final=dict(val_loss=x, tokens_per_s=1.0, steps=1),
                                         curves=[], overrides={'lr': lr, 'weight_decay': wd}, train_config=dict(lr=lr, weight_decay=wd),
                                         model_config={}, params=dict(total=1))
    return dict(experiment='fake', scale='cpu', variants=sorted({r['variant'] for r in runs.values()}), runs=runs)


def test_best_per_row_pairs_the_winner_with_the_reference():
    res = _grid({(0.01, 0.0): {1: 2.0, 2: 2.1}, (0.01, 0.1): {1: 1.9, 2: 2.0}, (0.02, 0.0): {1: 1.5, 2: 1.6}, (0.02, 0.1): {1: 1.7, 2: 1.8}})
    low, high = best_per_row(res)
    assert (low['row'], low['best'], high['best']) == (0.01, 0.1, 0.0)
    assert low['diff']['mean'] == pytest.approx(-0.1) and high['diff'] is None


def test_a_rule_holds_unless_an_alternative_is_better():
    res = _grid({(0.01, 0.0): {1: 2.0, 2: 2.1, 3: 2.05}, (0.01, 0.1): {1: 1.9, 2: 2.0, 3: 1.95}, (0.01, 0.3): {1: 2.1, 2: 1.9, 3: 2.2}})
    found, verdict = _none_better(res, 'weight_decay=0 | lr=0.01')
    assert verdict.startswith('disagrees') and 'weight_decay=0.1 | lr=0.01' in verdict and found.startswith('best: weight_decay=0.1')
    assert _none_better(res, 'weight_decay=0.1 | lr=0.01')[1] == 'agrees'
