"""The command line as users run it: train with a tiny budget, sample, resume, and one-line errors."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tinylm import cli, console
from tinylm.cli import main
from tinylm.core import threads_for, usable_cores
from tinylm.speed import competing_load
from tinylm.training import load_checkpoint, read_metrics


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TINYLM_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_console_script_train_then_sample(tmp_path, capsys):
    exe = shutil.which('tinylm')
    assert exe, 'the tinylm console script is not on PATH: is the package installed?'
    env = {**os.environ, 'TINYLM_CACHE': str(tmp_path / 'cache')}
    out = tmp_path / 'run'
    p = subprocess.run([exe, 'train', '--preset', 'tiny', '--out', str(out), '--no-progress'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert 'final train loss' in p.stdout and 'run folder' in p.stdout
    assert sorted(f.name for f in out.iterdir()) == ['ckpt.pt', 'loss.png', 'metrics.jsonl', 'sample.txt', 'summary.json']
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['steps'] == 30 and summary['val_loss'] < summary['uniform_loss']
    assert summary['tokenizer'].startswith('char-') and summary['torch']
    # the same entry point in this process: sampling needs no second interpreter start to be checked
    assert console.main(['sample', str(out), '--prompt', 'And the', '--tokens', '30', '--seed', '1']) == 0
    text = capsys.readouterr().out
    assert text.startswith('And the') and len(text.rstrip('\n')) == len('And the') + 30


def test_sampling_options_from_the_command_line(capsys, tmp_path):
    assert run(capsys, 'train', '--preset', 'tiny', '--max-steps', '4', '--out', str(tmp_path / 'r'), '--no-progress', '--threads', '1')[0] == 0
    # nucleus sampling and a stop character: the continuation ends at the first 'e' it generates
    rc, out, err = run(capsys, 'sample', str(tmp_path / 'r'), '--prompt', 'And th', '--tokens', '60', '--top-p', '0.9', '--stop', 'e')
    assert rc == 0, err
    cont = out.rstrip('\n')[len('And th'):]
    assert out.startswith('And th') and 'e' not in cont[:-1] and (cont.endswith('e') or len(cont) == 60), cont
    with pytest.raises(SystemExit) as e: main(['sample', str(tmp_path / 'r'), '--top-p', '1.5'])
    assert e.value.code == 2 and "argument --top-p: '1.5' is not a number in (0, 1]" in capsys.readouterr().err


def test_resume_from_the_command_line_matches_an_uninterrupted_run(tmp_path, capsys):
    # bit-identical only at one thread count: a matmul's reductions split differently across 1 and 2 threads
    common = ['train', '--preset', 'tiny', '--no-progress', '--threads', '1', '--set', 'log_interval=1', '--set', 'dropout=0.1']
    assert run(capsys, *common, '--out', str(tmp_path / 'full'))[0] == 0
    # a run planned for 30 steps whose time budget ran out after its first step, then resumed
    assert run(capsys, *common, '--out', str(tmp_path / 'cut'), '--set', 'max_seconds=1e-9')[0] == 0
    assert load_checkpoint(tmp_path / 'cut')['step'] == 1
    assert run(capsys, *common, '--out', str(tmp_path / 'cut'), '--resume')[0] == 0
    loss = lambda d: [r['train_loss'] for r in read_metrics(d) if 'train_loss' in r]
    assert loss(tmp_path / 'cut') == loss(tmp_path / 'full') and len(loss(tmp_path / 'full')) == 30


def test_overrides_reach_the_configs(tmp_path, capsys):
    rc, out, err = run(capsys, 'train', '--preset', 'tiny', '--no-progress', '--out', str(tmp_path / 'r'),
                       '--set', 'n_layer=1', '--set', 'train.warmup_steps=2', '--max-steps', '4', '--seed', '7')
    assert rc == 0, err
    ckpt = load_checkpoint(tmp_path / 'r')
    assert ckpt['model_config']['n_layer'] == 1 and ckpt['step'] == 4
    assert ckpt['train_config']['warmup_steps'] == 2 and ckpt['train_config']['seed'] == 7


@pytest.mark.parametrize('argv, message', [
    (['train', '--corpus', 'nosuchcorpus'], "unknown text source 'nosuchcorpus'"),
    (['train', '--corpus', './missing.txt'], 'missing.txt'),
    (['train', '--preset', 'huge'], "run preset='huge' is not a known run preset; allowed: 'default', 'tiny', 'gpu'"),
    (['train', '--model', 'gpt5'], "--model='gpt5' is not a known model preset"),
    (['train', '--set', 'n_head=3'], 'ModelConfig.n_head=3 must divide d_model=32'),
    (['train', '--set', 'lr=fast'], "lr='fast' is not a valid float"),
    (['train', '--set', 'depth=3'], "'depth' is neither a ModelConfig nor a TrainConfig field"),
    (['train', '--set', 'schedule=linear'], "TrainConfig.schedule='linear' is not a known schedule"),
    (['train', '--tokenizer', 'wordpiece'], 'wordpiece'),
    (['train', '--device', 'tpu'], "device 'tpu' is not a device name"),
    (['sample', 'no/such/run'], 'no checkpoint at'),
    (['train', '--set', 'grad_clip=nan'], 'TrainConfig.grad_clip=nan must be a finite number'),
    (['train', '--set', 'norm_eps=inf'], 'ModelConfig.norm_eps=inf must be a finite number'),
    (['train', '--set', 'vocab_size=10'], '--set vocab_size=10 is smaller than the vocabulary of the tokenizer'),
    (['train', '--lr', '1e39', '--set', 'warmup_steps=0'], 'TrainConfig.lr=1e+39 must be in (0, 1e6]'),
    (['train', '--prompt', 'price: 5€'], "--prompt 'price: 5€': the char-"),   # a sample prompt the corpus cannot spell: refused, not dropped
])
def test_errors_are_one_clear_line(argv, message, capsys):
    rc, out, err = run(capsys, *argv, *(['--preset', 'tiny'] if argv[0] == 'train' and '--preset' not in argv else []))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'tinylm {argv[0]}: error:'), err
    assert message in lines[0]


@pytest.mark.parametrize('argv, message', [
    (['train', '--max-steps', 'ten'], "argument --max-steps: 'ten' is not a positive integer"),
    (['train', '--max-steps', '0'], "argument --max-steps: '0' is not a positive integer"),
    (['train', '--lr', 'nan'], "argument --lr: 'nan' is not a positive number"),
    (['train', '--lr', '-0.001'], "argument --lr: '-0.001' is not a positive number"),
    (['train', '--seed', '-1'], "argument --seed: '-1' is not a non-negative integer"),
    (['sample', 'run', '--num-samples', '-1'], "argument --num-samples: '-1' is not a positive integer"),
    (['sample', 'run', '--tokens', '0'], "argument --tokens: '0' is not a positive integer"),
    (['sample', 'run', '--temperature', 'inf'], "argument --temperature: 'inf' is not a non-negative number"),
    (['sample', 'run', '--top-k', '0'], "argument --top-k: '0' is not a positive integer"),
])
def test_argparse_errors_exit_2_with_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_listings(capsys):
    listing = run(capsys, 'corpora')[1]
    assert [line.split()[0] for line in listing.splitlines()[:2]] == ['kjv', 'pystdlib']
    out = run(capsys, 'presets')[1]
    assert 'default' in out and 'baseline_2017' in out


def test_a_fresh_command_line_lists_presets_in_course_order(tmp_path):
    "The studies import some step modules out of notebook order; the CLI imports the steps first, so listings follow the course."
    code = 'import tinylm.cli\nfrom tinylm.model import MODEL_PRESETS\nprint(" ".join(MODEL_PRESETS))'
    names = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    steps = ['baseline_2017', 'prenorm', 'rmsnorm', 'no_bias', 'swiglu', 'rope', 'gqa', 'gpt2', 'modern']   # notebooks 04, 07-14
    assert [names.index(n) for n in steps] == sorted(names.index(n) for n in steps), names


def test_train_prompt_starts_the_sample(tmp_path, capsys):
    rc, out, _ = run(capsys, 'train', '--preset', 'tiny', '--max-steps', '2', '--device', 'cpu', '--no-progress',
                     '--out', str(tmp_path / 'run'), '--prompt', 'In the')
    assert rc == 0 and (tmp_path / 'run' / 'sample.txt').read_text().startswith('In the')


def test_a_busy_run_folder_is_one_clear_line(capsys, tmp_path):
    from tinylm.training import run_folder_lock
    with run_folder_lock(tmp_path / 'run'):   # as if another `tinylm train --out run` were running
        rc, out, err = run(capsys, 'train', '--preset', 'tiny', '--out', str(tmp_path / 'run'), '--no-progress')
    assert rc == 2 and err.strip().startswith('tinylm train: error: run folder') and 'is in use by another tinylm process' in err
    assert len(err.strip().splitlines()) == 1


def test_train_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit) as e: main(['train', '--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ('run presets (--preset): default, tiny, gpu', 'baseline_2017', 'modern', 'kjv', 'pystdlib', "'bpe:N'",
                 'n_layer', 'warmup_steps', 'cosine', 'wsd', 'ddp', 'fsdp'):
        assert name in out, f'{name!r} is not in `tinylm train --help`'


def test_threads_are_set_and_checked(capsys, tmp_path):
    import torch
    before = torch.get_num_threads()
    try:
        rc, out, err = run(capsys, 'train', '--preset', 'tiny', '--out', str(tmp_path / 'r'), '--no-progress', '--max-steps', '2', '--threads', '1')
        assert rc == 0 and torch.get_num_threads() == before       # the caller's threads are left as they were
    finally: torch.set_num_threads(before)
    assert ', 1 torch threads)' in json.loads((tmp_path / 'r' / 'summary.json').read_text())['device_name']   # it trained on one
    with pytest.raises(SystemExit): main(['train', '--threads', '0'])
    assert "argument --threads: '0' is not a positive integer" in capsys.readouterr().err


@pytest.mark.skipif(usable_cores() < 2, reason='one core: there is nothing to choose')
def test_train_takes_the_cores_other_processes_leave(capsys, tmp_path, monkeypatch):
    "On a machine whose cores are all busy, `tinylm train` takes one thread and says so; --threads decides instead; the caller's threads stay."
    before = torch.get_num_threads()
    with competing_load(usable_cores()):   # real busy processes, for as long as the look takes (not for the training)
        n, others = cli.choose_threads()
    assert n == 1 and others >= usable_cores() - 0.5, (n, others)
    monkeypatch.setattr(cli, 'choose_threads', lambda: (n, others))   # the trainings below see what that look saw
    rc, out, _ = run(capsys, 'train', '--preset', 'tiny', '--max-steps', '4', '--out', str(tmp_path / 'a'), '--no-progress')
    assert rc == 0 and f'threads: 1 of {usable_cores()} cores (other processes kept {others:.1f} cores busy' in out
    rc, out, _ = run(capsys, 'train', '--preset', 'tiny', '--max-steps', '4', '--out', str(tmp_path / 'b'), '--no-progress', '--threads', '2')
    assert rc == 0 and 'threads:' not in out
    assert torch.get_num_threads() == before
    assert [threads_for(4, x) for x in (None, 0.0, 1.4, 2.6, 9.0)] == [4, 4, 3, 1, 1]


def test_a_presets_prompt_stays_with_its_corpus(tmp_path, capsys):
    "On another corpus the preset's prompt (written for its own) is not used: the sample starts from nothing, and the log says so."
    text = tmp_path / 'notes.txt'
    text.write_text(''.join(f'And so note {i} of the list goes on, line after line.\n' for i in range(600)))   # it can spell 'And '
    rc, out, _ = run(capsys, 'train', '--preset', 'tiny', '--corpus', str(text), '--max-steps', '2', '--device', 'cpu', '--no-progress',
                     '--out', str(tmp_path / 'run'))
    assert rc == 0 and "the preset's sample prompt 'And ' is for its corpus 'kjv'" in out
    assert not (tmp_path / 'run' / 'sample.txt').read_text().startswith('And ')
    rc, out, _ = run(capsys, 'train', '--preset', 'tiny', '--corpus', str(text), '--max-steps', '2', '--device', 'cpu', '--no-progress',
                     '--out', str(tmp_path / 'run2'), '--prompt', 'And so')   # asked for: used
    assert rc == 0 and 'is for its corpus' not in out and (tmp_path / 'run2' / 'sample.txt').read_text().startswith('And so')
