"""The experiment harness as users drive it: plans, budgets, result files, skipping, and `tinylm experiment`."""
import dataclasses
import json
import math

import pytest

import tinylm  # noqa: F401  (fills every registry)
from tinylm.cli import main
from tinylm.experiments import EXPERIMENTS, SCALES, Experiment, grid, load_result, plan, result_path, run_experiment, summarize
from tinylm.training import split_overrides


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TINYLM_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('TINYLM_RESULTS', str(tmp_path / 'results'))


@pytest.fixture
def keep_scale():
    "A copy of the tiny scale that writes result files."
    SCALES['tiny-keep'] = dataclasses.replace(SCALES['tiny'], persist=True)
    yield 'tiny-keep'
    del SCALES['tiny-keep']


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_overrides_are_routed_and_checked():
    assert split_overrides({'norm': 'layer', 'lr': 1e-3}) == (None, {'norm': 'layer'}, {'lr': 1e-3})
    with pytest.raises(ValueError, match="'block_size' is a field of both configs"):
        split_overrides({'block_size': 64})
    with pytest.raises(ValueError, match="'nlayer' is neither a ModelConfig nor a TrainConfig field"):
        Experiment('x', {'a': {'nlayer': 2}})


def test_plan_precedence_and_seeds():
    exp = Experiment('x', {'a': {'lr': 5e-3}, 'b': {'n_layer': 3}}, base={'dropout': 0.0, 'lr': 1e-3},
                     scales={'tiny': {'seeds': (3, 4), 'max_steps': 7}})
    specs = {s.key: s for s in plan(exp, 'tiny', vocab_size=50)}
    assert list(specs) == ['a/seed=3', 'a/seed=4', 'b/seed=3', 'b/seed=4']
    a, b = specs['a/seed=3'], specs['b/seed=4']
    assert (a.train.lr, b.train.lr) == (5e-3, 1e-3)            # the variant beats the base
    assert a.train.max_steps == b.train.max_steps == 7          # per-scale settings apply to every variant
    assert (a.model.n_layer, b.model.n_layer) == (SCALES['tiny'].model['n_layer'], 3)
    assert a.model.vocab_size == 50 and b.train.seed == 4
    assert a.model.tie_embeddings is True       # a base of its own replaces EXPERIMENT_BASE (which unties)
    assert plan(Experiment('y', {'a': {}}), 'tiny')[0].model.tie_embeddings is False


def test_tiny_run_keeps_no_file_and_equal_tokens(tmp_path):
    res = run_experiment(Experiment('t', grid(lr=[1e-3, 1e-2])), 'tiny', verbose=False)
    assert not (tmp_path / 'results').exists()
    runs = list(res['runs'].values())
    assert len({r['budget']['tokens'] for r in runs}) == 1
    assert all(r['status'] == 'ok' and r['final']['val_loss'] < math.log(res['data']['vocab_size']) for r in runs)


def test_result_file_skip_and_rerun(tmp_path, keep_scale):
    exp = Experiment('keep', {'a': {}, 'b': {'lr': 1e-2}})
    res = run_experiment(exp, keep_scale, verbose=False)
    path = result_path('keep', keep_scale)
    assert path == tmp_path / 'results' / f'keep-{keep_scale}.json' and path.exists()
    stored = json.loads(path.read_text())
    run0 = stored['runs']['a/seed=0']
    for key in ('model_config', 'train_config', 'curves', 'final', 'budget', 'params', 'flops_per_token'):
        assert key in run0, key
    assert {'device', 'torch', 'git_commit', 'date'} <= set(run0['environment'])
    assert run0['budget']['flops'] == run0['flops_per_token'] * run0['budget']['tokens']
    assert any('val_loss' in r for r in run0['curves']) and any('train_loss' in r for r in run0['curves'])
    again = run_experiment(exp, keep_scale, verbose=False)
    assert again['runs'] == res['runs']                          # nothing re-ran: identical records, dates included
    exp.variants['b']['lr'] = 3e-3
    changed = run_experiment(exp, keep_scale, verbose=False)
    assert changed['runs']['a/seed=0'] == res['runs']['a/seed=0']
    assert changed['runs']['b/seed=0']['train_config']['lr'] == 3e-3
    assert load_result('keep', keep_scale)['runs'] == changed['runs']
    assert summarize(changed)['b']['seeds'] == 1


def test_flops_budget_gives_bigger_models_fewer_steps():
    res = run_experiment(Experiment('f', {'small': {}, 'big': {'d_model': 64}}, budget='flops'), 'tiny', verbose=False)
    small, big = res['runs']['small/seed=0'], res['runs']['big/seed=0']
    assert big['final']['steps'] < small['final']['steps']
    assert abs(big['budget']['flops'] / small['budget']['flops'] - 1) < 0.05


def test_divergence_is_a_result_not_a_crash():
    res = run_experiment(Experiment('d', {'x': {'lr': 1e3, 'grad_clip': 0.0, 'warmup_steps': 0}}), 'tiny', verbose=False)
    run = res['runs']['x/seed=0']
    assert run['status'] == 'diverged' and 'diverged at step' in run['error']
    assert summarize(res)['x']['diverged'] == 1


def test_cli_list_dry_run_and_run(capsys, tmp_path, keep_scale):
    rc, out, _ = run(capsys, 'experiment', '--list')
    assert rc == 0 and '06_baseline_lr' in out
    rc, out, _ = run(capsys, 'experiment', '06', '--scale', 'cpu', '--dry-run')
    assert rc == 0 and 'lr=0.001/seed=1: 300 steps x 2048 tokens' in out
    rc, out, _ = run(capsys, 'experiment', '06_baseline_lr', '--scale', keep_scale, '--seeds', '0', '--no-checkpoints')
    assert rc == 0 and 'wrote' in out
    stored = json.loads((tmp_path / 'results' / f'06_baseline_lr-{keep_scale}.json').read_text())
    assert len(stored['runs']) == len(EXPERIMENTS['06_baseline_lr'].variants)


@pytest.mark.parametrize('argv, message', [
    (['experiment', '99_nope'], "no experiment or notebook matches '99_nope'"),
    (['experiment', '06', '--seeds', 'one,two'], "--seeds 'one,two' must be comma-separated integers"),
])
def test_cli_errors(capsys, argv, message):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and err.startswith('tinylm experiment: error:') and message in err


def test_cli_rejects_unknown_scale(capsys):
    with pytest.raises(SystemExit) as e: main(['experiment', '06', '--scale', 'huge'])
    assert e.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
