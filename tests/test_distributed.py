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


# Each rank of a torchrun job runs these `tinylm train` command lines in turn, in one process group (main() joins a group
# it finds and leaves it open): starting the 3 processes of a job costs seconds of torch imports, so the launches below share one.
RANKS = """import contextlib, io, json, sys
import torch
from tinylm.cli import main
from tinylm.distributed import init_distributed
init_distributed(torch.device('cpu'))
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()): assert main(argv) == 0, argv
torch.distributed.destroy_process_group()
"""

CUT = ('--batch-size', '8', '--set', 'max_seconds=1e-9')   # an 8-step run whose time budget runs out after its first step
DDP, FSDP = ('--set', 'parallel=ddp'), ('--set', 'parallel=fsdp')


@pytest.fixture(scope='module')
def job(corpus, tmp_path_factory) -> Path:
    """One torchrun job on 2 processes: DDP with 2 accumulated micro-batches, the first step of an FSDP run, and the resumed
    rest of a run whose first step ran in one process. Notebook 20 runs DDP (2 x 4) and FSDP against one process, and 2
    accumulated micro-batches of 4 against one batch of 8, under nbdev_test; these are the cases it does not."""
    d = tmp_path_factory.mktemp('job')
    one(corpus, d / '1to2', *CUT)
    assert load_checkpoint(d / '1to2')['step'] == 1
    script = d / 'ranks.py'
    script.write_text(RANKS)
    runs = [base(corpus, d / 'ddp_accum', '--batch-size', '4', '--set', 'grad_accum=2', *DDP),
            base(corpus, d / '2to1', *CUT, *FSDP),
            base(corpus, d / '1to2', '--batch-size', '8', '--resume', *DDP)]
    run_torchrun(2, [str(script), json.dumps(runs)], timeout=300)
    return d


def test_accumulation_under_ddp_syncs_once_per_step_and_equals_the_big_batch(job, single):
    assert_same_run(job / 'ddp_accum', single)
    s, ref = (json.loads((d / 'summary.json').read_text()) for d in (job / 'ddp_accum', single))
    assert s['processes'] == 2 and ref['processes'] == 1 and s['tokens'] == ref['tokens']


def test_a_checkpoint_resumes_on_any_number_of_processes(corpus, job, single):
    "Stopped after one step on 2 processes (FSDP), resumed in 1; stopped after one step in 1, resumed on 2 (DDP)."
    assert load_checkpoint(job / '2to1')['step'] == 1
    one(corpus, job / '2to1', '--batch-size', '8', '--resume')
    assert load_checkpoint(job / '2to1')['step'] == load_checkpoint(job / '1to2')['step'] == 8
    assert_same_run(job / '2to1', single)   # against the uninterrupted run: stopping and resuming changes nothing
    assert_same_run(job / '1to2', single)


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


def test_bad_distributed_setups_are_refused_clearly(corpus, tmp_path, monkeypatch, capsys):
    # each rank of a torchrun job without --set parallel refuses before it joins a group (so the test needs no job: a failing
    # rank's error reaching torchrun's output is torchrun's part, which the kill test above sees); a global batch that does
    # not divide is refused by each rank alike
    for rank in (0, 1):
        monkeypatch.setenv('RANK', str(rank)); monkeypatch.setenv('LOCAL_RANK', str(rank)); monkeypatch.setenv('WORLD_SIZE', '2')
        assert main(base(corpus, tmp_path / 'a')) != 0 and not torch.distributed.is_initialized()
        err = capsys.readouterr().err
        assert "one of 2 processes started by torchrun, but parallel='none'" in err and 'add --set parallel=ddp' in err, err
        assert PARALLEL['ddp']().rows(8) == slice(4 * rank, 4 * rank + 4)
        with pytest.raises(ValueError, match='batch_size=7 is the global batch: it must divide among 2 processes'):
            PARALLEL['ddp']().rows(7)
    with pytest.raises(ValueError, match="TrainConfig.parallel='zero3' is not a known parallel; allowed: 'none', 'ddp', 'fsdp'"):
        TrainConfig(parallel='zero3')
    with pytest.raises(ValueError, match='nproc must be a positive integer'):
        torchrun_command(0, ['x'])
    assert expected_state_bytes(1000, 4, 'fsdp') == expected_state_bytes(1000, 1, 'ddp') // 4
