"""Several processes train one model (notebook 20): `tinylm train` under torchrun with gloo on this CPU, against one process."""
import contextlib
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import tinylm  # noqa: F401  (fills every registry)
from tinylm.cli import main
from tinylm.data import load_text
from tinylm.distributed import expected_state_bytes, run_torchrun, tinylm_command, torchrun_command
from tinylm.training import PARALLEL, TrainConfig, load_checkpoint

STEPS = ['--max-steps', '8', '--no-progress', '--set', 'log_interval=1', '--set', 'eval_interval=4', '--set', 'warmup_steps=2']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp('corpus') / 'kjv.txt'
    p.write_text(load_text('kjv')[:60_000])
    return p


def base(corpus, out, *extra) -> list[str]:
    return ['train', '--preset', 'tiny', '--corpus', str(corpus), '--out', str(out), *STEPS, *extra]


def one(corpus, out, *extra):
    "`tinylm train` in this process, at one thread as torchrun's workers run: the command's own code, without a new interpreter."
    with contextlib.redirect_stdout(io.StringIO()): assert main([*base(corpus, out, *extra), '--threads', '1']) == 0
    return out


def two(corpus, out, *extra):
    run_torchrun(2, tinylm_command(*base(corpus, out, *extra)), timeout=300)
    return out


def losses(run: Path) -> list[float]:
    return [r['train_loss'] for r in map(json.loads, (run / 'metrics.jsonl').read_text().splitlines()) if 'train_loss' in r]


def assert_same_run(a: Path, b: Path, tol: float = 1e-4):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 8, (la, lb)
    assert max(abs(x - y) for x, y in zip(la, lb)) < tol, (la, lb)
    wa, wb = load_checkpoint(a)['model'], load_checkpoint(b)['model']
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < tol, f'weights differ by up to {worst:.2e}'


@pytest.fixture(scope='module')
def single(corpus, tmp_path_factory) -> Path:
    "8 steps at batch 8 in one process, uninterrupted: the run every multi-process run here must equal."
    return one(corpus, tmp_path_factory.mktemp('single') / 'run', '--batch-size', '8')


# Notebook 20 runs DDP (2 x 4) and FSDP against this single run, and 2 accumulated micro-batches of 4 against it, under
# nbdev_test; the launches below are the cases it does not, so that the test command starts each torchrun job once.
def test_accumulation_under_ddp_syncs_once_per_step_and_equals_the_big_batch(corpus, single, tmp_path):
    ddp_accum = two(corpus, tmp_path / 'ddp_accum', '--batch-size', '4', '--set', 'grad_accum=2', '--set', 'parallel=ddp')
    assert_same_run(ddp_accum, single)
    s, ref = (json.loads((d / 'summary.json').read_text()) for d in (ddp_accum, single))
    assert s['processes'] == 2 and ref['processes'] == 1 and s['tokens'] == ref['tokens']


def resumed(corpus, out, first, then):
    "An 8-step run started by `first` whose time budget runs out after its first step, then resumed to 8 by `then`."
    first(corpus, out, '--batch-size', '8', '--set', 'max_seconds=1e-9')
    assert load_checkpoint(out)['step'] == 1
    then(corpus, out, '--batch-size', '8', '--resume')
    return out


def test_a_checkpoint_resumes_on_any_number_of_processes(corpus, single, tmp_path):
    ddp, fsdp = ('--set', 'parallel=ddp'), ('--set', 'parallel=fsdp')
    two_then_one = resumed(corpus, tmp_path / '2to1', lambda c, o, *a: two(c, o, *a, *fsdp), one)
    one_then_two = resumed(corpus, tmp_path / '1to2', one, lambda c, o, *a: two(c, o, *a, *ddp))
    assert load_checkpoint(two_then_one)['step'] == load_checkpoint(one_then_two)['step'] == 8
    assert_same_run(two_then_one, single)   # against the uninterrupted run: stopping and resuming changes nothing
    assert_same_run(one_then_two, single)


def children(pid: int) -> list[int]:
    out = []
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try: ppid = int((p / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError): continue
            if ppid == pid: out.append(int(p.name))
    return out


def rank_of(pid: int) -> int | None:
    try: env = (Path('/proc') / str(pid) / 'environ').read_bytes().split(b'\0')
    except OSError: return None
    return next((int(e[5:]) for e in env if e.startswith(b'RANK=')), None)


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='finds the ranks through /proc')
def test_killing_one_rank_ends_the_job_and_leaves_a_loadable_checkpoint(corpus, tmp_path):
    out = tmp_path / 'killed'
    cmd = torchrun_command(2, tinylm_command('train', '--preset', 'tiny', '--corpus', str(corpus), '--out', str(out), '--no-progress',
                                             '--max-steps', '100000', '--set', 'eval_interval=10', '--set', 'parallel=ddp'))
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        t0 = time.time()
        while not (out / 'ckpt.pt').exists():
            assert job.poll() is None and time.time() - t0 < 120, 'the job ended (or took too long) before its first checkpoint'
            time.sleep(0.2)
        ranks = {rank_of(p): p for p in children(job.pid)}
        assert 1 in ranks, f'no rank 1 among the workers {ranks}'
        os.kill(ranks[1], signal.SIGKILL)
        text, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None: job.kill()
    assert job.returncode != 0
    assert 'exitcode' in text and 'Signal 9 (SIGKILL)' in text, text[-3000:]   # torchrun names the rank that died and how
    ckpt = load_checkpoint(out)   # written atomically by rank 0: whole, whatever moment the kill came
    assert ckpt['step'] >= 10 and ckpt['step'] % 10 == 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(['train', '--preset', 'tiny', '--corpus', str(corpus), '--out', str(out), '--no-progress',
                     '--max-steps', str(ckpt['step'] + 5), '--resume']) == 0
    assert load_checkpoint(out)['step'] == ckpt['step'] + 5


def test_bad_distributed_setups_are_refused_clearly(corpus, tmp_path, monkeypatch):
    r = run_torchrun(2, tinylm_command(*base(corpus, tmp_path / 'a')), check=False, timeout=300)
    assert r.returncode != 0 and "parallel='none'" in r.stderr and 'add --set parallel=ddp' in r.stderr
    # the rank's error reaches torchrun's stderr (above); a global batch that does not divide is refused by each rank alike
    for rank in (0, 1):
        monkeypatch.setenv('RANK', str(rank)); monkeypatch.setenv('LOCAL_RANK', str(rank)); monkeypatch.setenv('WORLD_SIZE', '2')
        assert PARALLEL['ddp']().rows(8) == slice(4 * rank, 4 * rank + 4)
        with pytest.raises(ValueError, match='batch_size=7 is the global batch: it must divide among 2 processes'):
            PARALLEL['ddp']().rows(7)
    with pytest.raises(ValueError, match="TrainConfig.parallel='zero3' is not a known parallel; allowed: 'none', 'ddp', 'fsdp'"):
        TrainConfig(parallel='zero3')
    with pytest.raises(ValueError, match='nproc must be a positive integer'):
        torchrun_command(0, ['x'])
    assert expected_state_bytes(1000, 4, 'fsdp') == expected_state_bytes(1000, 1, 'ddp') // 4
