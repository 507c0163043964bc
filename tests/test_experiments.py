"""The experiment harness as users drive it: plans, budgets, result files, skipping, and `tinylm experiment`."""
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

import tinylm  # noqa: F401  (fills every registry)
from tinylm.cli import main
from tinylm.experiments import (EXPERIMENTS, SCALES, Experiment, grid, load_result, read_result, paired_difference, plan, ratio_interval,
                                result_path, run_experiment, summarize, t_quantile, tuning_grid, verdict, verdict_table)
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
    run0 = stored['runs']['a/seed=1']
    for key in ('model_config', 'train_config', 'curves', 'final', 'budget', 'params', 'flops_per_token'):
        assert key in run0, key
    assert {'device', 'cpu', 'torch', 'python', 'git_commit', 'git_diff', 'date'} <= set(run0['environment'])
    assert run0['final']['val_loss'] == run0['val_split']['loss'] and run0['val_split']['se'] > 0
    assert run0['val_split']['tokens'] == SCALES[keep_scale].final_eval_tokens // 32 * 32   # whole windows of the context
    assert run0['budget']['flops'] == run0['flops_per_token'] * run0['budget']['tokens']
    assert any('val_loss' in r for r in run0['curves']) and any('train_loss' in r for r in run0['curves'])
    again = run_experiment(exp, keep_scale, verbose=False)
    assert again['runs'] == res['runs']                          # nothing re-ran: identical records, dates included
    exp.variants['b']['lr'] = 3e-3
    changed = run_experiment(exp, keep_scale, verbose=False)
    assert changed['runs']['a/seed=1'] == res['runs']['a/seed=1']
    assert changed['runs']['b/seed=1']['train_config']['lr'] == 3e-3
    assert load_result('keep', keep_scale)['runs'] == changed['runs']
    assert summarize(changed)['b']['seeds'] == 1


def test_flops_budget_gives_bigger_models_fewer_steps():
    res = run_experiment(Experiment('f', {'small': {}, 'big': {'d_model': 64}}, budget='flops'), 'tiny', verbose=False)
    small, big = res['runs']['small/seed=1'], res['runs']['big/seed=1']
    assert big['final']['steps'] < small['final']['steps']
    assert abs(big['budget']['flops'] / small['budget']['flops'] - 1) < 0.05


def test_flops_budget_of_a_new_variant_when_the_reference_is_done(keep_scale):
    exp = Experiment('f2', {'small': {}}, budget='flops')
    first = run_experiment(exp, keep_scale, verbose=False)
    exp.variants['big'] = {'d_model': 64}
    res = run_experiment(exp, keep_scale, verbose=False)
    assert res['runs']['small/seed=1'] == first['runs']['small/seed=1']          # the reference was not re-run
    assert res['runs']['big/seed=1']['final']['steps'] < res['runs']['small/seed=1']['final']['steps']


def test_divergence_is_a_result_not_a_crash():
    res = run_experiment(Experiment('d', {'x': {'lr': 1e3, 'grad_clip': 0.0, 'warmup_steps': 0}}), 'tiny', verbose=False)
    run = res['runs']['x/seed=1']
    assert run['status'] == 'diverged' and 'diverged at step' in run['error']
    assert summarize(res)['x']['diverged'] == 1


def test_cli_list_dry_run_and_run(capsys, tmp_path, keep_scale):
    rc, out, _ = run(capsys, 'experiment', '--list')
    assert rc == 0 and '06_baseline_lr' in out
    rc, out, _ = run(capsys, 'experiment', '06', '--scale', 'cpu', '--dry-run')
    assert rc == 0 and 'baseline_2017/lr=0.001/seed=0: 800 steps x 2048 tokens = 1.6M tokens' in out
    assert 'then per variant, at its best LR: 3 seeds (1, 2, 3)' in out
    rc, out, _ = run(capsys, 'experiment', '06_baseline_lr', '--scale', keep_scale, '--seeds', '5', '--no-checkpoints')
    assert rc == 0 and 'wrote' in out and 'chosen LRs: baseline_2017' in out
    stored = json.loads((tmp_path / 'results' / f'06_baseline_lr-{keep_scale}.json').read_text())
    assert [r['stage'] for r in stored['runs'].values()].count('compare') == 1 and 'baseline_2017/seed=5' in stored['runs']


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


def test_tuned_experiment_tunes_then_compares(keep_scale):
    exp = Experiment('tuned', {'post': {}, 'pre': {'norm_placement': 'pre'}}, tune_lr=True,
                     scales={keep_scale: dict(seeds=(1, 2), tune_factors=(0.5, 1.0))})
    assert tuning_grid(exp, keep_scale) == [1.5e-3, 3e-3]
    res = run_experiment(exp, keep_scale, verbose=False)
    for v, t in res['tuning'].items():
        tune = {r['train_config']['lr']: r for r in res['runs'].values() if r['variant'] == v and r['stage'] == 'tune'}
        assert sorted(tune) == t['lrs'] and all(r['seed'] == SCALES[keep_scale].tune_seed for r in tune.values())
        assert t['val_loss'] == [tune[lr]['final']['val_loss'] for lr in t['lrs']]
        assert t['best_lr'] == min(tune, key=lambda lr: tune[lr]['final']['val_loss'])        # the argmin of the sweep
        # at 24 steps the largest LR wins: the edge was extended once (tune_extend=1), and that is flagged
        assert len(t['lrs']) == 3 and t['lrs'][-1] == 6e-3 and t['at_edge'] == (t['best_lr'] == 6e-3)
        compare = [r for r in res['runs'].values() if r['variant'] == v and r['stage'] == 'compare']
        assert sorted(r['seed'] for r in compare) == [1, 2] and {r['train_config']['lr'] for r in compare} == {t['best_lr']}
    assert summarize(res)['pre']['seeds'] == 2 and summarize(res)['pre']['lr'] == res['tuning']['pre']['best_lr']
    again = run_experiment(exp, keep_scale, verbose=False)
    assert again['runs'] == res['runs'] and again['tuning'] == res['tuning']        # all done: nothing re-ran
    table = verdict_table(res)
    assert '| **post** |' in table and '| pre |' in table and 'Δ vs post' in table


def test_tuned_experiment_errors():
    with pytest.raises(ValueError, match="variant 'a' sets lr=0.001, but tune_lr=True chooses each variant's LR"):
        Experiment('x', {'a': {'lr': 1e-3}}, tune_lr=True)
    with pytest.raises(ValueError, match="tune_factors=\\(0, 1\\) must be positive multiples"):
        Experiment('x', {'a': {}}, tune_lr=True, scales={'tiny': dict(tune_factors=(0, 1))})
    with pytest.raises(ValueError, match="reference='b' is not one of its variants: a"):
        Experiment('x', {'a': {}}, reference='b')


def _fake(values: dict) -> dict:
    "A result holding only final losses: variant -> {seed: loss or None (diverged)}."
    runs = {f'{v}/seed={s}': dict(variant=v, seed=s, stage='compare', status='ok' if x is not None else 'diverged',
                                  final=dict(val_loss=x, tokens_per_s=1.0, steps=1), curves=[], train_config=dict(lr=1e-3),
                                  params=dict(total=1))
            for v, per in values.items() for s, x in per.items()}
    return dict(experiment='fake', scale='cpu', variants=list(values), runs=runs)


def test_t_quantile_matches_the_t_distribution():
    import numpy as np
    for df in (1, 2, 4, 9, 29, 30, 31, 60):
        t = t_quantile(df)
        x = np.linspace(-t, t, 200_001)
        pdf = (1 + x ** 2 / df) ** (-(df + 1) / 2) * math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        assert abs(np.trapezoid(pdf, x) - 0.95) < 2e-4, df
    with pytest.raises(ValueError, match='df=0 must be a positive integer'): t_quantile(0)


def test_paired_difference_and_the_verdict_rule():
    res = _fake({'ref': {1: 2.00, 2: 2.10, 3: 1.95}, 'a': {1: 1.98, 2: 2.081, 3: 1.929}, 'b': {1: 2.03, 2: 2.07, 3: 1.96},
                 'c': {1: 2.02, 2: None, 3: 1.97}})
    a = paired_difference(res, 'a', 'ref')
    diffs = [-0.02, -0.019, -0.021]
    assert a['n'] == 3 and a['seeds'] == [1, 2, 3] and a['mean'] == pytest.approx(-0.02)
    half = 4.303 * 0.001 / math.sqrt(3)
    assert (a['lo'], a['hi']) == (pytest.approx(-0.02 - half), pytest.approx(-0.02 + half)) and a['verdict'] == 'better'
    assert paired_difference(res, 'ref', 'a')['verdict'] == 'worse'
    assert paired_difference(res, 'b', 'ref')['verdict'] == 'not separable'          # +0.03, -0.03, +0.01
    c = paired_difference(res, 'c', 'ref')                                          # seed 2 diverged: dropped from the pairs
    assert c['seeds'] == [1, 3] and c['unpaired'] == [2] and c['mean'] == pytest.approx(0.02)
    assert verdict(None, None).startswith('fewer than two pairs')
    with pytest.raises(ValueError, match="'z' is not a variant of fake: ref, a, b, c"): paired_difference(res, 'z', 'ref')


def test_ratio_interval_of_interleaved_timings():
    r = ratio_interval([1.0, 1.1, 0.9, 1.05], [1.25, 1.36, 1.14, 1.30])
    assert 0.78 < r['lo'] < r['ratio'] < r['hi'] < 0.82 and r['verdict'] == 'faster'
    assert ratio_interval([1.0, 1.2], [1.1, 1.0])['verdict'] == 'not separable'
    with pytest.raises(ValueError, match='two equal, non-empty lists'): ratio_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match='positive values'): ratio_interval([1.0, 0.0], [1.0, 2.0])


def test_git_provenance_covers_the_code_only(tmp_path):
    "A result is dirty when the code under the package folder changed, not when a notebook or result file did."
    import subprocess
    from tinylm.core import git_commit, git_diff_hash
    git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=tmp_path, check=True,
                                    capture_output=True, text=True).stdout.strip()
    pkg = tmp_path / 'pkg'; pkg.mkdir()
    (pkg / 'm.py').write_text('x = 1\n'); (tmp_path / 'result.json').write_text('{}\n')
    git('init', '-q'); git('add', '.'); git('commit', '-qm', 'c')
    head = git('rev-parse', 'HEAD')
    assert git_commit(pkg) == head and git_diff_hash(pkg) is None
    (tmp_path / 'result.json').write_text('{"a": 1}\n')
    assert git_commit(pkg) == head and git_diff_hash(pkg) is None                   # outside the code: still clean
    (pkg / 'm.py').write_text('x = 2\n')
    h = git_diff_hash(pkg)
    assert git_commit(pkg) == head + '+dirty' and len(h) == 16
    (pkg / 'm.py').write_text('x = 3\n')
    assert git_diff_hash(pkg) != h                                                  # the hash names the diff
    nogit = tmp_path.parent / (tmp_path.name + '-nogit'); nogit.mkdir()
    assert git_commit(nogit) is None and git_diff_hash(nogit) is None


def test_a_run_is_not_trained_twice_across_experiments(keep_scale, capsys):
    "Same config, seed and harness as a run in another result file: copied and marked, not retrained (unless told to)."
    first = run_experiment(Experiment('e1', {'base': {}, 'hi': {'lr': 1e-2}}), keep_scale, verbose=False)
    second = run_experiment(Experiment('e2', {'also base': {}, 'lo': {'lr': 1e-3}}), keep_scale)
    assert 'reused from e1' in capsys.readouterr().out
    r = second['runs']['also base/seed=1']
    assert r['reused_from'] == 'e1' and r['variant'] == 'also base' and r['final'] == first['runs']['base/seed=1']['final']
    assert 'reused_from' not in second['runs']['lo/seed=1']
    fresh = run_experiment(Experiment('e3', {'base': {}}), keep_scale, verbose=False, reuse=False)
    assert 'reused_from' not in fresh['runs']['base/seed=1']
    assert fresh['runs']['base/seed=1']['final']['val_loss'] == first['runs']['base/seed=1']['final']['val_loss']   # deterministic
    probed = run_experiment(Experiment('e4', {'base': {}}, probes={'one': lambda tr: 1.0}), keep_scale, verbose=False)
    assert 'reused_from' not in probed['runs']['base/seed=1']       # a probe records more than the stored run has


def test_an_interrupted_result_is_not_current(keep_scale):
    from tinylm.experiments import is_complete, is_current
    res = run_experiment(Experiment('c', {'a': {}, 'b': {'norm_placement': 'pre'}}, tune_lr=True), keep_scale, verbose=False)
    assert res['complete'] and is_current(res)
    older = {k: v for k, v in res.items() if k != 'complete'}                     # files written before the flag: by shape
    assert is_complete(older)
    assert not is_complete({k: v for k, v in older.items() if k != 'tuning'})      # stopped during the tuning stage
    one_short = dict(older, runs={k: v for k, v in older['runs'].items() if k != 'b/seed=1'})
    assert not is_complete(one_short) and not is_current(one_short)
    assert not is_current(dict(res, complete=False))


@pytest.mark.parametrize('text, message', [
    ('not json {', 'is not a readable result file (JSONDecodeError'),
    ('[1, 2]', 'is not a tinylm result file: it holds a JSON list, not an object'),
    ('{"runs": {}}', "it has no 'experiment' name"),
    ('{"experiment": "x", "runs": [1]}', "'runs' is not an object of runs by key"),
    ('{"experiment": "x", "runs": {"a/seed=1": 3}}', "run 'a/seed=1' is not an object"),
    ('{"experiment": "x", "runs": {"a/seed=1": {"variant": "a", "seed": "1", "status": "ok", "final": {}}}}', "run 'a/seed=1' has no 'seed' (int)"),
])
def test_a_damaged_result_file_is_named(tmp_path, text, message):
    (tmp_path / 'x-cpu.json').write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        read_result(tmp_path / 'x-cpu.json', training=True)
    assert str(tmp_path / 'x-cpu.json') in str(e.value)


def test_a_result_file_of_another_experiment_is_refused(tmp_path, keep_scale):
    (tmp_path / f'x-{keep_scale}.json').write_text('{"experiment": "y", "runs": {}}')
    with pytest.raises(ValueError, match="holds the results of experiment 'y', not 'x'"):
        run_experiment(Experiment('x', {'a': {}}), keep_scale, results=tmp_path, verbose=False)


def test_every_committed_result_file_reads():
    seen = set()
    for p in sorted((Path(__file__).resolve().parent.parent / 'nbs' / 'results').glob('*-*.json')):
        name, scale = p.stem.rsplit('-', 1)
        seen.add(scale)
        if p.name.startswith(('main_job', 'train_')):   # the summary.json of a `tinylm train` run: what ran and what it reached
            s = json.loads(p.read_text())
            assert len(s['git_commit']) >= 40 and s['val_loss'] < s['uniform_loss'] and s['tokens_per_s'] > 0, p.name
        elif not p.name.startswith('02_'):              # the tokenizer table is not a result file
            res = load_result(name, scale, p.parent)
            assert isinstance(res, dict) and res['experiment'] == name and res.get('scale', scale) == scale, p.name
    assert {'cpu', 'gpu'} <= seen


def test_a_run_from_a_newer_version_is_not_reused_and_does_not_crash(tmp_path):
    "run_index skips a run whose config this version cannot read (an unknown field), instead of failing the whole experiment."
    from tinylm.experiments import run_index
    good = dict(status='ok', fingerprint=dict(model=dict(d_model=32), train=dict(lr=1e-3), harness=2))
    newer = dict(status='ok', fingerprint=dict(model=dict(d_model=32, d_future=4), train=dict(lr=1e-3), harness=2))
    (tmp_path / 'x-cpu.json').write_text(json.dumps(dict(experiment='x', runs={'a/seed=1': good, 'b/seed=1': newer})))
    index = run_index(tmp_path, 'cpu')
    assert len(index) == 1 and next(iter(index.values()))[1] is not newer


def test_a_stored_run_missing_a_newer_train_field_is_still_done(keep_scale):
    "is_done reads a stored train config through today's TrainConfig: a field added since takes its default, so old result files stay valid."
    from tinylm.experiments import fingerprint, is_done
    exp = Experiment('x', {'a': {}})
    (spec,) = plan(exp, 'tiny', 65)
    fp = fingerprint(spec, 'tokens')
    older = dict(fp, train={k: v for k, v in fp['train'].items() if k != 'max_seconds'})   # as if max_seconds were newer
    run = dict(status='ok', fingerprint=older)
    assert is_done(dict(runs={spec.key: run}), spec, 'tokens')
    changed = dict(fp, train=dict(fp['train'], lr=fp['train']['lr'] * 2))
    assert not is_done(dict(runs={spec.key: dict(run, fingerprint=changed)}), spec, 'tokens')
    unreadable = dict(fp, train=dict(fp['train'], from_the_future=1))
    assert not is_done(dict(runs={spec.key: dict(run, fingerprint=unreadable)}), spec, 'tokens')


def test_a_variant_with_its_own_tokenizer_is_scored_in_bits_per_byte(keep_scale):
    exp = Experiment('vocab_t', {'char': {'tokenizer': 'char'}, 'bpe': {'tokenizer': 'bpe:280'}}, budget='flops', metric='val_bpb')
    specs = {s.variant: s for s in plan(exp, keep_scale)}
    assert specs['char'].tokenizer is None and specs['bpe'].tokenizer == 'bpe:280'   # 'char' is the scale's own data
    assert specs['bpe'].model.vocab_size == 280
    res = run_experiment(exp, keep_scale, verbose=False)
    char, bpe = res['runs']['char/seed=1'], res['runs']['bpe/seed=1']
    assert bpe['fingerprint']['data'] == {'tokenizer': 'bpe:280'} and 'data' not in char['fingerprint']
    for r in (char, bpe):   # bits per byte: the summed loss in bits over the UTF-8 bytes of the scored targets
        f, v = r['final'], r['val_split']
        assert v['bytes'] > 0 and math.isclose(f['val_bpb'], f['val_loss'] * v['tokens'] / (v['bytes'] * math.log(2)))
    assert char['val_split']['bytes'] == char['val_split']['tokens']     # KJV is ASCII: a character is a byte
    assert bpe['val_split']['bytes'] > 1.2 * bpe['val_split']['tokens']  # 24 merges: a BPE token spells more than a byte
    assert res['data']['tokenizers']['bpe:280']['vocab_size'] == 280
    # the same experiment again finds both runs done; a copy of the char run elsewhere is reused and gets its bpb filled in
    again = run_experiment(exp, keep_scale, verbose=False)
    assert again['runs']['bpe/seed=1']['final'] == bpe['final']
    stripped = json.loads(result_path('vocab_t', keep_scale).read_text())
    for r in stripped['runs'].values(): r['final'].pop('val_bpb')
    result_path('other', keep_scale).write_text(json.dumps(dict(stripped, experiment='other')))
    result_path('vocab_t', keep_scale).unlink()
    reused = run_experiment(exp, keep_scale, verbose=False)
    for k in ('char/seed=1', 'bpe/seed=1'):
        assert reused['runs'][k]['reused_from'] == 'other'
        assert math.isclose(reused['runs'][k]['final']['val_bpb'], res['runs'][k]['final']['val_bpb'])


def test_tokenizer_variants_are_checked():
    with pytest.raises(ValueError, match="'seconds' budget cannot time"):
        Experiment('v', {'a': {'tokenizer': 'bpe:300'}}, budget='seconds', metric='val_bpb')
    with pytest.raises(ValueError, match='must be a tokenizer spec'):
        Experiment('v', {'a': {'tokenizer': 512}}, metric='val_bpb')
    with pytest.raises(ValueError, match="losses per token do not compare"):
        Experiment('v', {'a': {'tokenizer': 'bpe:300'}})
    with pytest.raises(ValueError, match="metric='bpb' is not a final metric"):
        Experiment('v', {'a': {}}, metric='bpb')
    with pytest.raises(ValueError, match="unknown tokenizer spec 'wordpiece'"):
        plan(Experiment('v', {'a': {'tokenizer': 'wordpiece'}}, metric='val_bpb'), 'tiny')


def test_the_gpu_script_names_only_what_can_run_at_gpu_scale():
    "A GPU lease is minutes long: a typo in .ci/gpu, or a benchmark with no gpu scale, must fail here, not there."
    import subprocess
    from tinylm.experiments import Benchmark, no_scale
    script = Path(__file__).resolve().parent.parent / '.ci' / 'gpu'
    names = re.findall(r'^job \d+ python3 -m tinylm\.console experiment (\S+) --scale gpu', script.read_text(), re.M)
    assert len(names) >= 4, names
    for name in names:
        assert name in EXPERIMENTS, f'.ci/gpu runs {name!r}, which is not a registered experiment'
        exp = EXPERIMENTS[name]
        assert not isinstance(exp, Benchmark) or no_scale(exp, 'gpu') is None, no_scale(exp, 'gpu')
    assert subprocess.run(['bash', '-n', str(script)]).returncode == 0   # it parses


def test_a_resumable_benchmark_adds_only_the_pieces_its_plan_has_gained(tmp_path, capsys):
    "A complete result file of a resumable study is extended, not redone; with nothing new it is left as it was."
    from tinylm.experiments import Benchmark, result_path, run_benchmark
    runs = []
    def study(pieces):
        def run(scale, device, previous=None, save=None):
            res = previous or dict(done={})
            for p in pieces:
                if p not in res['done']: runs.append(p); res['done'][p] = len(p); save(res)
            return res
        return Benchmark('06_demo_grow', run, resumable=True)
    run_benchmark(study(['a', 'b']), 'cpu', results=tmp_path)
    path = result_path('06_demo_grow', 'cpu', tmp_path)
    assert runs == ['a', 'b'] and read_result(path)['done'] == {'a': 1, 'b': 1}
    stamp = path.stat().st_mtime_ns
    run_benchmark(study(['a', 'b']), 'cpu', results=tmp_path)
    assert runs == ['a', 'b'] and path.stat().st_mtime_ns == stamp and 'nothing new to measure' in capsys.readouterr().out
    res = run_benchmark(study(['a', 'b', 'cc']), 'cpu', results=tmp_path)   # the plan gained a piece: only that one runs
    assert runs == ['a', 'b', 'cc'] and res['done'] == {'a': 1, 'b': 1, 'cc': 2} and 'partial' not in read_result(path)
    assert f'wrote {path}' in capsys.readouterr().out
