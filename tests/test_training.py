"""Training: schedules, optimizer groups, exact resume, divergence, checkpoints that load safely."""
import json
import math
import os
import signal

import pytest
import torch

from tinylm.data import TokenDataset
from tinylm.model import baseline_2017
from tinylm.training import RunFolderInUse, TrainConfig, Trainer, TrainingDiverged, run_folder_lock, evaluate, evaluate_split, load_checkpoint, lr_at, model_from_checkpoint, param_groups, read_metrics, train
from tinylm.model import ModelConfig, Transformer


class Bytes:
    "A byte-level encoder: the smallest thing TokenDataset can build from."
    vocab_size, name = 256, 'bytes'

    def encode(self, text):
        return list(text.encode('utf-8'))


TEXT = ''.join(f'line {i}: the quick brown fox jumps over the lazy dog {i * i % 97}\n' for i in range(3000))
MODEL = baseline_2017(vocab_size=256, block_size=32, n_layer=2, d_model=32, n_head=4, dropout=0.1)
KW = dict(max_steps=24, batch_size=4, lr=3e-3, warmup_steps=4, eval_interval=8, eval_iters=2, log_interval=1,
          progress=False, device='cpu')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return TokenDataset.build(TEXT, Bytes(), tmp_path_factory.mktemp('data') / 'bytes')


class InterruptAfter:
    def __init__(self, data, n):
        self.data, self.n, self.vocab_size = data, n, data.vocab_size

    def get_batch(self, split, *a, **k):
        if split == 'train':
            if self.n == 0:
                raise KeyboardInterrupt
            self.n -= 1
        return self.data.get_batch(split, *a, **k)


def losses(records):
    return [r['train_loss'] for r in records if 'train_loss' in r]


def test_a_resume_at_another_thread_count_says_it_is_not_bit_for_bit(data, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(MODEL, TrainConfig(**dict(KW, max_steps=8)), data, tmp_path / 'r')
        assert load_checkpoint(tmp_path / 'r')['torch_threads'] == 1
        capsys.readouterr()
        torch.set_num_threads(2)
        train(MODEL, TrainConfig(**dict(KW, max_steps=10)), data, tmp_path / 'r', resume=True)
        assert 'resuming at 2 torch threads; the checkpoint was written at 1' in capsys.readouterr().out
        # the resume above checkpointed at 2 threads: resuming at 2 again has nothing to say
        train(MODEL, TrainConfig(**dict(KW, max_steps=12)), data, tmp_path / 'r', resume=True)
        assert 'resuming at' not in capsys.readouterr().out
    finally: torch.set_num_threads(before)


def test_resume_reproduces_the_loss_trajectory_exactly(data, tmp_path):
    full = train(MODEL, TrainConfig(**KW), data, tmp_path / 'full')
    with pytest.raises(KeyboardInterrupt):
        train(MODEL, TrainConfig(**KW), InterruptAfter(data, 13), tmp_path / 'cut')
    assert load_checkpoint(tmp_path / 'cut')['step'] == 8   # an exception mid-step 14 keeps the last evaluation's checkpoint
    resumed = train(MODEL, TrainConfig(**KW), data, tmp_path / 'cut', resume=True)
    assert len(losses(full.records)) == 24
    assert losses(resumed.records) == losses(full.records)          # bit for bit on CPU
    assert losses(read_metrics(tmp_path / 'cut')) == losses(full.records)
    a, _ = model_from_checkpoint(tmp_path / 'full')
    b, _ = model_from_checkpoint(tmp_path / 'cut' / 'ckpt.pt')
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_training_lowers_the_loss_and_writes_the_run_folder(data, tmp_path):
    res = train(MODEL.replace(dropout=0.0), TrainConfig(**{**KW, 'max_steps': 60, 'log_interval': 10}), data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pt', 'loss.png', 'metrics.jsonl']
    first = losses(res.records)[0]
    assert res.val_loss < first - 1.0, (first, res.val_loss)
    assert res.tokens == 60 * 4 * 32 and res.step == 60
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    assert all(json.loads(line)['step'] > 0 for line in lines)
    assert (tmp_path / 'loss.png').read_bytes()[:4] == b'\x89PNG'


def test_divergence_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    t = Trainer(MODEL, TrainConfig(**{**KW, 'log_interval': 4}), data, tmp_path)

    class Poison(InterruptAfter):
        def get_batch(self, split, *a, **k):
            if split == 'train':
                self.n -= 1
                if self.n == 0:
                    t.model.blocks[1].ffn.down_proj.weight.data.fill_(float('nan'))
            return self.data.get_batch(split, *a, **k)

    t.data = Poison(data, 10)
    with pytest.raises(TrainingDiverged, match=r'training diverged at step 12: loss=nan.*last good checkpoint'):
        t.fit()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt['step'] == 8
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values())


def test_checkpoints_load_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))

    torch.save({'format': 'tinylm-checkpoint', 'version': 1, 'payload': Evil()}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='is not a readable tinylm checkpoint'):
        load_checkpoint(tmp_path / 'evil.pt')
    torch.save({'just': torch.zeros(1)}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='is not a tinylm checkpoint'):
        load_checkpoint(tmp_path / 'other.pt')
    with pytest.raises(FileNotFoundError, match='no checkpoint at'):
        load_checkpoint(tmp_path / 'missing.pt')


def test_schedules():
    c = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(99, c) == pytest.approx(0.0, abs=1e-3)
    assert lr_at(54, c) == pytest.approx(0.5, abs=0.02)
    assert lr_at(39, c.replace(schedule='noam')) == pytest.approx(0.5)
    assert lr_at(80, c.replace(schedule='constant')) == 1.0


def test_param_groups_cover_every_parameter_once():
    m = Transformer(MODEL)
    decay, no_decay = param_groups(m, 0.1)
    ids = [id(p) for p in decay['params']] + [id(p) for p in no_decay['params']]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in decay['params']} == {n for n, p in m.named_parameters()
                                                       if p.ndim == 2 and n != 'tok_emb.weight'}
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0


@pytest.mark.parametrize('kwargs, message', [
    (dict(lr=-1.0), 'TrainConfig.lr=-1.0 must be in (0, 1e6]'),
    (dict(lr=1e39), 'TrainConfig.lr=1e+39 must be in (0, 1e6]'),
    (dict(lr=float('inf')), 'TrainConfig.lr=inf must be a finite number'),
    (dict(lr=None), 'TrainConfig.lr=None must be a finite number, got NoneType'),
    (dict(eps=float('inf')), 'TrainConfig.eps=inf must be a finite number'),
    (dict(weight_decay=float('nan')), 'TrainConfig.weight_decay=nan must be a finite number'),
    (dict(grad_clip=float('nan')), 'TrainConfig.grad_clip=nan must be a finite number'),
    (dict(block_size=True), 'TrainConfig.block_size=True must be an integer or None, got bool'),
    (dict(warmup_steps=True), 'TrainConfig.warmup_steps=True must be an integer, got bool'),
    (dict(seed=False), 'TrainConfig.seed=False must be an integer, got bool'),
    (dict(device=0), 'TrainConfig.device=0 must be a string'),
    (dict(max_steps=0), 'TrainConfig.max_steps=0 must be a positive integer'),
    (dict(schedule='step'), "TrainConfig.schedule='step' is not a known schedule; allowed: 'cosine', 'noam', 'constant'"),
    (dict(dtype='half'), "TrainConfig.dtype='half' is not allowed; allowed: 'auto', 'float32', 'bfloat16'"),
    (dict(beta2=1.0), 'TrainConfig.beta2=1.0 must be in [0, 1)'),
    (dict(grad_clip=-1.0), 'TrainConfig.grad_clip=-1.0 must be >= 0'),
])
def test_train_config_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        TrainConfig(**kwargs)
    assert message in str(e.value)


def test_mismatched_vocab_and_context_are_rejected(data):
    with pytest.raises(ValueError, match='the data has vocab_size 256 but ModelConfig.vocab_size=100'):
        train(MODEL.replace(vocab_size=100), TrainConfig(**KW), data)
    with pytest.raises(ValueError, match='TrainConfig.block_size=64 exceeds ModelConfig.block_size=32'):
        train(MODEL, TrainConfig(**KW, block_size=64), data)


def test_evaluate_is_repeatable(data):
    m = Transformer(MODEL)
    a, b = evaluate(m, data, iters=3, batch_size=4), evaluate(m, data, iters=3, batch_size=4)
    assert a == b and math.isfinite(a)


def test_periodic_evaluation_ignores_the_training_seed(data):
    "Two runs with different seeds are scored on the same validation windows: same weights, same loss."
    a, b = Trainer(MODEL, TrainConfig(**KW, seed=1), data), Trainer(MODEL, TrainConfig(**KW, seed=2), data)
    b.model.load_state_dict(a.model.state_dict())
    assert a.evaluate() == b.evaluate()


def test_evaluate_split_scores_every_window_once(data):
    m = Transformer(MODEL.replace(dropout=0.0))
    full = evaluate_split(m, data, 'val', batch_size=5)
    n = (data.n_tokens('val') - 1) // 32
    assert full['windows'] == n and full['tokens'] == 32 * n and 0 < full['se'] < 0.05
    toks = torch.from_numpy(data.tokens('val')[:32 * n + 1].astype('int64'))
    with torch.no_grad(): ref = torch.nn.functional.cross_entropy(m(toks[:-1].view(n, 32)).transpose(1, 2), toks[1:].view(n, 32))
    assert full['loss'] == pytest.approx(ref.item(), abs=1e-5)
    assert evaluate_split(m, data, 'val', batch_size=64) == pytest.approx(full)                 # batching does not matter
    assert evaluate_split(m, data, 'val', max_tokens=320)['tokens'] == 320
    with pytest.raises(ValueError, match="the 'val' split has .* too few for one window of block_size=100000"):
        evaluate_split(m, data, 'val', block_size=100_000)


def test_checkpoints_of_tinylm_0_1_still_load(tmp_path):
    "Version 1 had an `attention` config field and QK-norm weights under qk_transform.fns.0: both are upgraded on load."
    from tinylm.training import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint
    cfg = ModelConfig(vocab_size=30, block_size=16, n_layer=2, d_model=32, n_head=4, n_kv_head=2, qk_norm='rms',
                      norm_placement='pre', norm='rms', dropout=0.0)
    torch.manual_seed(0); model = Transformer(cfg).eval()
    with torch.no_grad(): model.blocks[1].attn.q_norm.weight.normal_()
    old = {k.replace('.attn.q_norm.', '.attn.qk_transform.fns.0.q_norm.').replace('.attn.k_norm.', '.attn.qk_transform.fns.0.k_norm.'): v
           for k, v in model.state_dict().items()}
    assert any('qk_transform.fns.0.q_norm' in k for k in old)
    torch.save(dict(format=CHECKPOINT_FORMAT, version=1, step=3, model=old, model_config={**cfg.to_dict(), 'attention': 'gqa'},
                    train_config=None, optimizer=None), tmp_path / 'ckpt.pt')
    loaded, ckpt = model_from_checkpoint(tmp_path)
    assert ckpt['version'] == 2 and 'attention' not in ckpt['model_config']
    idx = torch.randint(0, 30, (2, 10))
    torch.testing.assert_close(loaded(idx), model(idx))
    torch.save(dict(format=CHECKPOINT_FORMAT, version=7, step=0, model={}, model_config={}), tmp_path / 'v7.pt')
    with pytest.raises(ValueError, match='has checkpoint version 7; this tinylm reads versions 1 and 2'):
        load_checkpoint(tmp_path / 'v7.pt')
    with pytest.raises(ValueError, match="attention='flash'; tinylm 0.1 knew only 'mha' and 'gqa'"):
        ModelConfig.from_dict({**cfg.to_dict(), 'attention': 'flash'})


class SigintAfter(InterruptAfter):
    "Sends this process SIGINT (a real Ctrl-C) in the middle of step n + 1, then carries on."

    def get_batch(self, split, *a, **k):
        if split == 'train':
            if self.n == 0:
                os.kill(os.getpid(), signal.SIGINT)
            self.n -= 1
        return self.data.get_batch(split, *a, **k)


def test_ctrl_c_finishes_the_step_and_resumes_exactly(data, tmp_path):
    old = signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C as in a terminal, even in a background job (SIGINT ignored)
    try: _ctrl_c_finishes_the_step_and_resumes_exactly(data, tmp_path)
    finally: signal.signal(signal.SIGINT, old)


def _ctrl_c_finishes_the_step_and_resumes_exactly(data, tmp_path):
    full = train(MODEL, TrainConfig(**KW), data, tmp_path / 'full')
    with pytest.raises(KeyboardInterrupt):
        train(MODEL, TrainConfig(**KW), SigintAfter(data, 13), tmp_path / 'cut')
    assert load_checkpoint(tmp_path / 'cut')['step'] == 14          # the step the signal arrived in, finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is put back
    resumed = train(MODEL, TrainConfig(**KW), data, tmp_path / 'cut', resume=True)
    assert [r['train_loss'] for r in resumed.records if 'train_loss' in r] == [r['train_loss'] for r in full.records if 'train_loss' in r]


def test_a_run_folder_is_locked_while_training(data, tmp_path):
    with run_folder_lock(tmp_path / 'run'):
        with pytest.raises(RunFolderInUse, match=r'run folder .*run is in use by another tinylm process \(pid \d+\)'):
            train(MODEL, TrainConfig(**KW), data, tmp_path / 'run')
    train(MODEL, TrainConfig(**KW).replace(max_steps=2), data, tmp_path / 'run')   # free again
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['ckpt.pt', 'loss.png', 'metrics.jsonl']


def test_resume_edges(data, tmp_path):
    run = tmp_path / 'run'
    done = train(MODEL, TrainConfig(**KW), data, run)
    again = train(MODEL, TrainConfig(**KW), data, run, resume=True)      # a finished run: the same result, no new lines
    assert (again.step, again.val_loss, read_metrics(run)) == (24, done.val_loss, done.records)
    with open(run / 'metrics.jsonl', 'a') as f:
        f.write('{"step": 25, "train_lo')                                  # torn by a kill
    with pytest.raises(ValueError, match=r'metrics.jsonl: line 28 is not a JSON record'):
        read_metrics(run)
    (run / '.ckpt.pt.dead.tmp').write_bytes(b'0' * 1000)
    train(MODEL, TrainConfig(**KW), data, run, resume=True)
    assert read_metrics(run) == done.records and not list(run.glob('.*.tmp'))
    (run / 'ckpt.pt').unlink()
    fresh = train(MODEL, TrainConfig(**KW), data, run, resume=True)      # nothing to resume: a fresh log, not appended
    assert read_metrics(run) == fresh.records and len(fresh.records) == len(done.records)


@pytest.mark.parametrize('text, message', [('{"step": 1}\nnot json\n{"step": 2}\n', 'line 2 is not a JSON record'),
                                           ('[1, 2]\n', 'line 1 is not a metrics record'),
                                           ('{"step": "1"}\n', 'line 1 is not a metrics record')])
def test_damaged_metrics_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / 'metrics.jsonl').write_text(text)
    with pytest.raises(ValueError, match=message):
        read_metrics(tmp_path, torn_tail=True)


def test_from_scratch_loss_clip_and_adamw_match_torch():
    from tinylm.training import AdamW, clip_grad_norm, cross_entropy
    torch.manual_seed(0)
    z, y = torch.randn(3, 7, 50) * 10, torch.randint(0, 50, (3, 7))
    y[1] = -1
    assert torch.allclose(cross_entropy(z, y), torch.nn.functional.cross_entropy(z.view(-1, 50), y.view(-1), ignore_index=-1), atol=1e-5)
    huge = torch.tensor([[3e4, -3e4, 0.0]])
    assert torch.allclose(cross_entropy(huge, torch.tensor([2])), torch.tensor(3e4))
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 8).mul(50)
    for m in (a, b):
        m(x).pow(2).sum().backward()
    assert torch.allclose(clip_grad_norm(a.parameters(), 0.5), torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5))
    assert all(torch.allclose(p.grad, q.grad, atol=1e-7) for p, q in zip(a.parameters(), b.parameters()))
    w1 = torch.randn(30, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    o1, o2 = AdamW([w1], lr=3e-2, betas=(0.8, 0.9), weight_decay=0.5), torch.optim.AdamW([w2], lr=3e-2, betas=(0.8, 0.9), weight_decay=0.5)
    for _ in range(200):
        g = torch.randn(30)
        for w, o in ((w1, o1), (w2, o2)):
            w.grad = g.clone()
            o.step()
        assert torch.allclose(w1, w2, atol=1e-6)
