"""The speed study (notebook 14b): the reference GPT-2 is the same model as tinylm's, the two trainers reach the same loss, the benchmark's pieces, and `tinylm bench`."""
import subprocess
import sys
import tempfile

import pytest
import torch

import tinylm  # noqa: F401  (fills every registry)
from tinylm.cli import RUN_PRESETS, main
from tinylm.generation import generate
from tinylm.model import MODEL_PRESETS, Transformer
from tinylm.modern import gpt2
from tinylm.speed import (MAIN_JOB, DecodeStep, step_decode, MarkovTokens, ReferenceTrainer, bench_config, cell_key, competing_load, reference_from,
                          op_shares, quiet_profiler, step_ceiling, run_speed, run_threads, speed_headline, step_benchmark, thread_benchmark)
from tinylm.training import TrainConfig, Trainer


def test_the_reference_is_the_same_model():
    cfg = gpt2(vocab_size=50, block_size=16, n_layer=3, d_model=48, n_head=3, dropout=0.0)
    torch.manual_seed(1); model = Transformer(cfg); ref = reference_from(model)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in model.parameters())
    x, y = torch.randint(0, 50, (2, 3, 16)).unbind(0)
    a, b = model(x, y)[1], ref(x, y)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    a.backward(); b.backward()
    assert torch.allclose(model.blocks[2].ffn.up_proj.weight.grad, ref.h[2].c_fc.weight.grad, atol=1e-6)
    assert torch.allclose(model.blocks[0].attn.v_proj.weight.grad, ref.h[0].c_attn.weight.grad[96:], atol=1e-6)


def test_the_two_trainers_reach_the_same_loss():
    "Same initial weights, same batches, same schedule: tinylm's step and nanoGPT's agree step by step in float32."
    cfg, _ = bench_config('tiny')
    data = MarkovTokens(cfg.vocab_size, n_tokens=4096)
    tcfg = TrainConfig(max_steps=100, batch_size=4, lr=3e-3, warmup_steps=2, device='cpu', progress=False, seed=0, dtype='float32')
    ours = Trainer(cfg, tcfg, data)
    theirs = ReferenceTrainer(reference_from(ours.model), tcfg.replace(block_size=cfg.block_size), data, torch.device('cpu'))
    la = [ours.train_step()[0].item() for _ in range(6)]
    lb = [theirs.train_step()[0].item() for _ in range(6)]
    assert max(abs(a - b) for a, b in zip(la, lb)) < 1e-4, (la, lb)
    assert la[-1] < la[0] - 0.05   # it learns: the comparison is of a falling loss


def test_markov_tokens_are_windows_of_one_stream():
    d = MarkovTokens(20, n_tokens=1000, seed=3)
    x, y = d.get_batch('train', 5, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(d.ids, MarkovTokens(20, n_tokens=1000, seed=3).ids)
    follows = (d.ids[1:] == torch.from_numpy(__import__('numpy').random.default_rng(3).permutation(20))[d.ids[:-1]]).float().mean()
    assert 0.85 < follows < 0.97   # keep=0.9 (a uniform jump lands on the successor 1 time in 20)
    with pytest.raises(ValueError, match='vocab_size must be an integer >= 2'): MarkovTokens(1)


def test_competing_load_starts_and_stops_its_processes():
    with competing_load(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(ValueError, match='non-negative integer'):
        with competing_load(-1): pass


def test_step_benchmark_reports_rates_ratios_and_equal_losses():
    r = step_benchmark('tiny', threads=1, rounds=2, steps=1)
    assert {'tinylm', 'reference'} <= set(r['variants']) and r['threads'] == 1 and r['load'] == 0
    for v in r['variants'].values():
        assert v['tokens_per_s'] > 0 and len(v['tokens_per_s_rounds']) == 2 and 0 < v['peak_fraction'] < 5
    assert r['variants']['tinylm']['loss'] == pytest.approx(r['variants']['reference']['loss'], abs=1e-3)
    x = next(x for x in r['ratios'] if x['what'] == 'tinylm / reference')
    assert x['n'] == 2 and x['lo'] <= x['ratio'] <= x['hi']
    with pytest.raises(ValueError, match="unknown shape 'huge'; allowed: 'tiny'"): bench_config('huge')


def test_run_speed_saves_each_cell_and_resumes():
    saved = []
    res = run_speed('tiny', save=lambda r: saved.append(dict(r['cells'])), verbose=False)
    key = cell_key('tiny', 1, 0)
    assert list(res['cells']) == [key] and saved and key in saved[-1]
    again = run_speed('tiny', previous=res, verbose=False)
    assert again['cells'][key] is res['cells'][key]   # a finished cell is kept, not measured again
    assert any(line.startswith('tiny, 1 thread, idle: tinylm x') for line in speed_headline(res))
    with pytest.raises(ValueError, match="no 'huge' scale; allowed: 'tiny'"): run_speed('huge')


def test_decode_against_hf_gives_the_same_tokens():
    pytest.importorskip('transformers')
    from tinylm.speed import decode_vs_hf
    d = decode_vs_hf(threads=1, rounds=1, new_tokens=6, shape=dict(n_layer=1, d_model=32, n_head=2))
    assert d['identical_tokens'] is True and d['tokens_per_s']['tinylm'] > 0 and d['tokens_per_s']['hf'] > 0


def test_tinylm_bench_prints_the_comparison_and_refuses_bad_arguments(capsys):
    r = subprocess.run([sys.executable, '-m', 'tinylm.cli', 'bench', '--shape', 'tiny', '--threads', '1', '--rounds', '2', '--steps', '1'],
                       capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())   # outside a checkout: the installed tinylm
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'tiny (cpu, threads=1, competing processes=0' in r.stdout and 'tinylm / reference' in r.stdout
    assert main(['bench', '--shape', 'tiny', '--rounds', '0']) == 2   # the bad arguments in this process: the same code, no start-up
    assert '--rounds must be a positive integer, got 0' in capsys.readouterr().err
    assert main(['bench', '--shape', 'tiny', '--decode-batch', '4']) == 2
    assert '--decode-batch needs --decode' in capsys.readouterr().err
    assert main(['bench', '--shape', 'tiny', '--decode', '--decode-batch', '0']) == 2
    assert '--decode-batch must be a positive integer, got 0' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['bench', '--shape', 'medium'])
    assert e.value.code == 2 and "invalid choice: 'medium'" in capsys.readouterr().err


def test_main_job_shape_is_the_default_run_preset():
    "The thread study times the step `tinylm train` runs by default: same model preset, fields and batch as 05a's preset."
    p = RUN_PRESETS['default']
    s = dict(MAIN_JOB)
    assert (s.pop('model'), s.pop('batch_size'), s.pop('lr')) == (p.model, p.train.batch_size, p.train.lr)
    assert {k: s[k] for k in p.model_overrides} == p.model_overrides
    assert s['vocab_size'] == 66   # the character vocabulary of KJV, which the main job trains on (main_job-cpu.json)


def test_thread_benchmark_restores_threads_and_run_threads_resumes():
    before = torch.get_num_threads()
    t = thread_benchmark((1, 2), rounds=1, steps=1)
    assert torch.get_num_threads() == before and set(t['tokens_per_s']) == {'1 thread', '2 threads'}
    assert t['ratios'][0]['what'] == '2 threads / 1 thread' and t['tokens_per_s']['1 thread'] > 0
    saved = []
    r = run_threads('tiny', save=saved.append, verbose=False)
    assert list(r['cells']) == ['load=0 spin'] and len(saved) == 1
    assert run_threads('tiny', previous=r, save=saved.append, verbose=False) is r and len(saved) == 1   # nothing left to do
    with pytest.raises(ValueError, match="allowed: 'tiny', 'cpu'"): run_threads('gpu')
    with pytest.raises(ValueError, match='times the CPU'): run_threads('tiny', device='cuda')


def test_decode_step_has_one_shape_and_the_tokens_of_generate():
    "The fixed-size-cache step (what `compile_decode_step` compiles) decodes as `generate` does, on full heads and on RoPE + GQA."
    for name in ('gpt2', 'modern'):
        cfg = MODEL_PRESETS[name](vocab_size=97, block_size=48, n_layer=2, d_model=32, n_head=4, dropout=0.0)
        torch.manual_seed(1); m = Transformer(cfg).eval()
        prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(1))
        step = DecodeStep(m, 5 + 30)
        assert torch.equal(step_decode(step, prompt, 30), generate(m, prompt, 30, temperature=0)), name
        assert torch.equal(step_decode(step, prompt, 30), generate(m, prompt, 30, temperature=0)), name   # a second use: stale slots stay hidden
        sampled = step_decode(DecodeStep(m, 35, greedy=False), prompt, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(2))
        assert torch.equal(sampled, generate(m, prompt, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(2))), name
    with pytest.raises(ValueError, match=r'max_len=0 must be an integer in \[1, block_size=48\]'):
        DecodeStep(m, 0)
    with pytest.raises(ValueError, match=r"prompt \(5 tokens\) \+ new_tokens <= the step's max_len=35"):
        step_decode(step, prompt, 31)   # past the cache: refused, never written into its last slot
    with pytest.raises(ValueError, match='greedy=False'):
        step_decode(step, prompt, 3, temperature=0.7)   # a greedy step cannot sample: said, not ignored


def test_a_batched_decode_step_gives_each_row_the_tokens_it_gets_alone():
    "Ragged prompts, left-padded: each row's padding is hidden and its positions start at its first real token, as in `generate`."
    prompts = [[5, 17, 42, 96, 3], [90], [1, 2, 3]]
    for name in ('gpt2', 'modern'):
        cfg = MODEL_PRESETS[name](vocab_size=97, block_size=48, n_layer=2, d_model=32, n_head=4, dropout=0.0)
        torch.manual_seed(2); m = Transformer(cfg).eval()
        ours = step_decode(DecodeStep(m, 20, batch=3), prompts, 10)
        assert ours == generate(m, prompts, 10, temperature=0), name
        assert ours == [step_decode(DecodeStep(m, 20), torch.tensor([p]), 10)[0].tolist() for p in prompts], name
        assert step_decode(DecodeStep(m, 20, batch=3), prompts, 10, prefill=False) == ours, name   # the prompts a token a step
        equal = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(0))   # a (B, T) tensor gives a tensor back
        assert torch.equal(step_decode(DecodeStep(m, 20, batch=2), equal, 6), generate(m, equal, 6, temperature=0)), name
    with pytest.raises(ValueError, match=r'3 prompts, but this step decodes batch=2 rows; make it with DecodeStep\(model, max_len, batch=3\)'):
        step_decode(DecodeStep(m, 20, batch=2), prompts, 2)
    with pytest.raises(ValueError, match='batch=0 must be a positive integer'):
        DecodeStep(m, 20, batch=0)
    with pytest.raises(ValueError, match=r'prefill needs \(batch=3, L\) prompts with 1 <= L <= max_len=20, got \(2, 4\)'):
        DecodeStep(m, 20, batch=3).prefill(equal, torch.ones_like(equal, dtype=torch.bool))


def test_op_shares_split_a_step_and_bound_what_any_change_can_win(capfd):
    "The profile's three shares sum to one per step, the ceiling is Amdahl's bound, and the profiler's own stderr lines are dropped."
    cfg, _ = bench_config('tiny')
    tr = Trainer(cfg, TrainConfig(max_steps=10, batch_size=2, progress=False), MarkovTokens(cfg.vocab_size))
    p = op_shares(tr, 2)
    sh = {k: v['median'] for k, v in p['shares'].items()}
    assert set(sh) == {'matmul', 'attention', 'other'} and sh['matmul'] > 0.05 and sh['attention'] > 0 and sh['other'] > 0
    assert abs(sum(sh.values()) - 1) < 0.02 and p['steps'] == 2 and p['ms_per_step'] > 0
    assert step_ceiling(p) == pytest.approx(1 / (sh['matmul'] + sh['attention']))
    assert 'USDT:' not in capfd.readouterr().err and tr.step == 2
    with pytest.raises(ValueError, match='steps=0 must be a positive integer'): op_shares(tr, 0)
    with quiet_profiler(): print('kept', file=sys.stderr)
    assert capfd.readouterr().err == 'kept\n'
