"""Several processes train one model (notebook 20): `tinylm train` under torchrun with gloo on this CPU, against one process."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tinylm  # noqa: F401  (fills every registry)
from tinylm.data import load_text
from tinylm.distributed import expected_state_bytes, run_torchrun, tinylm_command, torchrun_command
from tinylm.training import TrainConfig, load_checkpoint

STEPS = ['--max-steps', '8', '--no-progress', '--set', 'log_interval=1', '--set', 'eval_interval=4', '--set', 'warmup_steps=2']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp('corpus') / 'kjv.txt'
    p.write_text(load_text('kjv')[:60_000])
    return p


def base(corpus, out, *extra) -> list[str]:
    return ['train', '--preset', 'tiny', '--corpus', str(corpus), '--out', str(out), *STEPS, *extra]


def one(corpus, out, *extra):
    r = subprocess.run([sys.executable, *tinylm_command(*base(corpus, out, *extra))], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
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


def test_two_processes_train_the_same_model_as_one(corpus, tmp_path):
    single = one(corpus, tmp_path / 'single', '--batch-size', '8')
    accum = one(corpus, tmp_path / 'accum', '--batch-size', '4', '--set', 'grad_accum=2')
    ddp = two(corpus, tmp_path / 'ddp', '--batch-size', '8', '--set', 'parallel=ddp')
    fsdp = two(corpus, tmp_path / 'fsdp', '--batch-size', '8', '--set', 'parallel=fsdp')
    ddp_accum = two(corpus, tmp_path / 'ddp_accum', '--batch-size', '4', '--set', 'grad_accum=2', '--set', 'parallel=ddp')
    assert_same_run(ddp, single)        # DDP at 2 x 4 = one process at 8
    assert_same_run(accum, single)      # 2 micro-batches of 4 = one batch of 8
    assert_same_run(fsdp, ddp)          # sharding changes where the numbers live, not the numbers
    assert_same_run(ddp_accum, single)  # accumulation under DDP syncs once per step and still equals the big batch
    s = json.loads((ddp / 'summary.json').read_text())
    assert s['processes'] == 2 and s['tokens'] == json.loads((single / 'summary.json').read_text())['tokens']


def resumed(corpus, out, first, then):
    "4 steps of an 8-step plan by `first`, killed there as if interrupted (the run is cut to max-steps 4), then resumed to 8 by `then`."
    first(corpus, out, '--batch-size', '8', '--max-steps', '4')
    then(corpus, out, '--batch-size', '8', '--resume')
    return out


def test_a_checkpoint_resumes_on_any_number_of_processes(corpus, tmp_path):
    ddp, fsdp = ('--set', 'parallel=ddp'), ('--set', 'parallel=fsdp')
    ref = resumed(corpus, tmp_path / 'ref', one, one)
    two_then_one = resumed(corpus, tmp_path / '2to1', lambda c, o, *a: two(c, o, *a, *fsdp), one)
    one_then_two = resumed(corpus, tmp_path / '1to2', one, lambda c, o, *a: two(c, o, *a, *ddp))
    assert load_checkpoint(ref)['step'] == 8
    assert_same_run(two_then_one, ref)
    assert_same_run(one_then_two, ref)


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
    r = subprocess.run([sys.executable, *tinylm_command('train', '--preset', 'tiny', '--corpus', str(corpus), '--out', str(out),
                        '--no-progress', '--max-steps', str(ckpt['step'] + 5), '--resume')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(out)['step'] == ckpt['step'] + 5


def test_bad_distributed_setups_are_refused_clearly(corpus, tmp_path):
    r = run_torchrun(2, tinylm_command(*base(corpus, tmp_path / 'a')), check=False, timeout=300)
    assert r.returncode != 0 and "parallel='none'" in r.stderr and 'add --set parallel=ddp' in r.stderr
    r = run_torchrun(2, tinylm_command(*base(corpus, tmp_path / 'b', '--batch-size', '7', '--set', 'parallel=ddp')), check=False, timeout=300)
    assert r.returncode != 0 and 'batch_size=7 is the global batch: it must divide among 2 processes' in r.stderr
    with pytest.raises(ValueError, match="TrainConfig.parallel='zero3' is not a known parallel; allowed: 'none', 'ddp', 'fsdp'"):
        TrainConfig(parallel='zero3')
    with pytest.raises(ValueError, match='nproc must be a positive integer'):
        torchrun_command(0, ['x'])
    assert expected_state_bytes(1000, 4, 'fsdp') == expected_state_bytes(1000, 1, 'ddp') // 4
