"Notebook 16: the fits recover known laws, the compute budget spends what it says, and result files become points."
import math

import numpy as np
import pytest

import tinylm  # noqa: F401  (fills every registry)
from tinylm.experiments import plan, run_flops_per_token
from tinylm.scaling import (fit_isoflop, fit_parabola, fit_scaling_law, isoflop_points, law_loss, law_optimum, past_optimum,
                            power_law, predict_run)
from tinylm.studies.scaling import COMPUTE, ISOFLOP_BUDGETS, ISOFLOP_EXPERIMENT, WIDTH_FACTORS, compute_budget, scale_compute

CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def test_power_law_and_parabola():
    x = np.logspace(2, 6, 5)
    f = power_law(x, 2.0 * x ** -0.3)
    assert f['a'] == pytest.approx(-0.3) and f['k'] == pytest.approx(2.0) and f['hi'] - f['lo'] < 1e-9
    p = fit_parabola(x, 0.05 * (np.log(x) - np.log(5e3)) ** 2 + 1.5)
    assert p['n_opt'] == pytest.approx(5e3, rel=1e-6) and p['loss_opt'] == pytest.approx(1.5) and p['inside']
    assert fit_parabola(x, np.log(x) * -np.log(x))['n_opt'] is None
    with pytest.raises(ValueError, match='two or more distinct x'): power_law([1, 1], [1, 2])


def test_parametric_fit_recovers_a_noiseless_law():
    N, D = (g.ravel() for g in np.meshgrid(np.logspace(6, 9, 5), np.logspace(8, 11, 5)))
    fit = fit_scaling_law(N, D, law_loss(CHINCHILLA, N, D))
    for k in ('alpha', 'beta', 'E'): assert fit[k] == pytest.approx(CHINCHILLA[k], rel=0.02), (k, fit[k])
    n, d = law_optimum(fit, 1e21)
    n0, d0 = law_optimum(CHINCHILLA, 1e21)
    assert n == pytest.approx(n0, rel=0.1) and n * d * 6 == pytest.approx(1e21)


def test_isoflop_recovers_the_optimum_exponent():
    pts = [dict(budget=c, C=c, N=n, D=c / (6 * n), loss=float(law_loss(CHINCHILLA, n, c / (6 * n))))
           for c in (1e18, 1e19, 1e20) for n in law_optimum(CHINCHILLA, c)[0] * np.logspace(-0.5, 0.5, 5)]
    iso = fit_isoflop(pts, n_boot=20)
    a = CHINCHILLA['beta'] / (CHINCHILLA['alpha'] + CHINCHILLA['beta'])
    assert iso['N']['a'] == pytest.approx(a, abs=0.02) and iso['D']['a'] == pytest.approx(1 - a, abs=0.02)
    assert 10 <= iso['n_boot'] <= 20 and all(o['inside'] for o in iso['optima'])   # draws with < 3 distinct sizes are dropped
    flat = [dict(p, loss=-math.log(p['N']) ** 2) for p in pts]      # no minimum anywhere: an error, not a number
    with pytest.raises(ValueError, match='no minimum in the IsoFLOP profile'): fit_isoflop(flat, n_boot=0)


def _run(variant, lr, loss, N=1000, D=20000, width=16):
    return dict(variant=variant, seed=0, stage='tune', status='ok', final=dict(val_loss=loss, tokens=D), budget=dict(flops=6.0 * N * D),
                params=dict(non_embedding=N), model_config=dict(d_model=width), train_config=dict(lr=lr))


def test_points_take_each_variant_at_its_best_lr():
    res = dict(experiment='x', runs={'a/1': _run('C x1 | w', 0.01, 2.0), 'a/2': _run('C x1 | w', 0.02, 1.9),
                                      'b/1': dict(_run('C x2 | w', 0.01, None), status='diverged')},
               tuning={'C x1 | w': dict(at_edge=True)})
    (p,) = isoflop_points(res)
    assert (p['budget'], p['loss'], p['lr'], p['C'], p['at_edge']) == ('C x1', 1.9, 0.02, 1.2e8, True)


def test_past_optimum_and_prediction():
    pts = [dict(budget=b, C=c, N=n, D=c / (6 * n), loss=float(law_loss(CHINCHILLA, n, c / (6 * n))), width=w)
           for b, c in (('a', 1e18), ('b', 1e19), ('c', 1e20)) for w, n in ((1, 1e7), (2, 3e7), (3, 1e8), (4, 3e8), (5, 1e9))]
    small = past_optimum(pts)[0]
    assert small['width'] == 1 and small['keeps_improving'] and small['runs'][-1]['tokens_per_param'] > 1000
    iso = fit_isoflop(pts, n_boot=0)
    cands = {w: (n, 6 * n) for w, n in ((1, 1e7), (2, 3e7), (3, 1e8), (4, 3e8), (5, 1e9), (6, 3e9))}
    pred = predict_run(CHINCHILLA, iso, 1e21, cands)
    best = min(cands, key=lambda w: abs(math.log(cands[w][0] / pred['N_opt'])))
    assert pred['width'] == best and pred['loss_law'] == pytest.approx(float(law_loss(CHINCHILLA, cands[best][0], 1e21 / (6 * cands[best][0]))))


def test_compute_budget_spends_the_multiple():
    specs = compute_budget(plan(ISOFLOP_EXPERIMENT, 'cpu', 66, seeds=(0,)), ISOFLOP_EXPERIMENT, 'cpu', None)
    C = scale_compute('cpu', 66)
    assert len(specs) == len(ISOFLOP_BUDGETS) * len(WIDTH_FACTORS)
    for s in specs:
        spent = run_flops_per_token(s) * s.tokens_per_step * s.train.max_steps
        assert spent == pytest.approx(COMPUTE['16_isoflop'][s.variant] * C, rel=0.5 / s.train.max_steps + 1e-9)
        assert s.train.warmup_steps / s.train.max_steps == pytest.approx(50 / 800, abs=1 / s.train.max_steps)
