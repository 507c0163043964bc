"""Grouped-query attention (notebook 12) and generation with the KV cache (notebook 04a), against references and the installed package."""
import math

import pytest
import torch
import torch.nn.functional as F

import tinylm  # noqa: F401  (fills every registry: RoPE positions, ...)
from tinylm.attention import MultiHeadAttention, attend, causal_mask
from tinylm.core import count_params
from tinylm.experiments import EXPERIMENTS, plan
from tinylm.model import MODEL_PRESETS
from tinylm.generation import KVCache, generate, kv_cache_bytes, left_pad, prompt_positions, relative_positions, sample_next, top_k_filter, top_p_filter
from tinylm.gqa import gqa_2017
from tinylm.attention import repeat_kv
from tinylm.model import ModelConfig, Transformer, baseline_2017

SMALL = dict(vocab_size=50, block_size=24, n_layer=2, d_model=32, n_head=4, dropout=0.0, tie_embeddings=False, init_std=0.3)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model(n_kv_head=2, **kw):
    torch.manual_seed(0)
    return Transformer(gqa_2017(**{**SMALL, **kw}, n_kv_head=n_kv_head)).eval()


def test_attend_with_fewer_kv_heads_equals_repeated_heads_with_every_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 6, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    kr, vr = repeat_kv(k, 4), repeat_kv(v, 4)
    torch.testing.assert_close(kr[:, 5], k[:, 1])  # query head 5 reads key/value head 5 // 4
    kp = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    for T, pad in ((6, None), (2, None), (1, None), (6, kp), (3, kp)):
        ref = F.scaled_dot_product_attention(q[:, :, -T:], kr, vr, attn_mask=attend_mask(T, 6, pad))
        for impl in ('sdpa', 'naive'):
            torch.testing.assert_close(attend(q[:, :, -T:], k, v, True, pad, impl=impl), ref, atol=1e-5, rtol=1e-5)


def attend_mask(T, S, kp):
    "The mask `attend` builds: causal, aligned to the end, padding queries see themselves."
    m = causal_mask(T, S)
    if kp is None: return m
    self_key = torch.arange(S)[None, :] == torch.arange(S - T, S)[:, None]
    return m & (kp[:, None, None, :] | self_key)


def test_fewer_kv_heads_match_a_per_head_reference():
    torch.manual_seed(1)
    x = torch.randn(2, 7, 32)
    for n_kv in (2, 1):
        g = MultiHeadAttention(32, 4, n_kv_head=n_kv)
        q = g.q_proj(x).view(2, 7, 4, 8).transpose(1, 2)
        k = g.k_proj(x).view(2, 7, n_kv, 8).transpose(1, 2)
        v = g.v_proj(x).view(2, 7, n_kv, 8).transpose(1, 2)
        heads = [torch.softmax((q[:, h] @ k[:, h // (4 // n_kv)].transpose(-2, -1) / math.sqrt(8)).masked_fill(~causal_mask(7), -math.inf), -1)
                 @ v[:, h // (4 // n_kv)] for h in range(4)]
        ref = g.o_proj(torch.stack(heads, 1).transpose(1, 2).reshape(2, 7, 32))
        torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=1e-5)
        g.impl = 'naive'
        torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='n_kv_head=3 must be a positive integer that divides n_head=4'):
        MultiHeadAttention(32, 4, n_kv_head=3)


def test_config_preset_and_parameter_counts():
    cfg = MODEL_PRESETS['gqa']()
    assert (cfg.n_kv_head, cfg.kv_heads) == (2, 2)
    full, mqa = Transformer(baseline_2017(**SMALL)), Transformer(gqa_2017(**SMALL, n_kv_head=1))
    d, hd = 32, 8
    assert count_params(full)['total'] - count_params(mqa)['total'] == 2 * 2 * (d * d + d - (d * hd + hd))
    assert mqa.blocks[1].attn.k_proj.weight.shape == (8, 32)
    same = Transformer(gqa_2017(**SMALL, n_kv_head=4))
    same.load_state_dict(full.state_dict())
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(same.eval()(idx), full.eval()(idx))
    assert ModelConfig(n_kv_head=2).kv_heads == 2          # n_kv_head alone says which attention a model has
    with pytest.raises(ValueError, match='ModelConfig.n_kv_head=3 must divide n_head=4'):
        gqa_2017(n_kv_head=3)


@pytest.mark.parametrize('position', ['sinusoidal', 'rope'])
@pytest.mark.parametrize('n_kv', [4, 2, 1])
def test_cache_pieces_equal_full_forward_and_bytes_equal_formula(position, n_kv):
    m = model(n_kv, position=position)
    idx = torch.randint(0, 50, (3, 12))
    cache = KVCache.for_model(m, 3)
    out = torch.cat([m(idx[:, :5], cache=cache), m(idx[:, 5:6], cache=cache), m(idx[:, 6:], cache=cache)], 1)
    torch.testing.assert_close(out, m(idx), atol=1e-5, rtol=1e-5)
    assert cache.seq_len == 12 and cache.k[0].shape == (3, n_kv, 24, 8)
    assert cache.nbytes() == kv_cache_bytes(m.cfg, 3) == 2 * 2 * 3 * n_kv * 8 * 24 * 4
    assert KVCache.for_model(m, 1, dtype=torch.bfloat16).nbytes() == kv_cache_bytes(m.cfg, 1, dtype=torch.bfloat16)


def test_cache_errors_and_rolling():
    c = KVCache(1, 1, 1, 2, max_len=3)
    c[0].update(torch.arange(6.).view(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match='KV cache is full: layer 0 holds 3 of max_len=3'):
        c[0].update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r'got keys \(1, 2, 1, 2\)'):
        c[0].update(torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2))
    c.drop_oldest(2)
    assert c.seq_len == 1 and c.k[0][0, 0, 0].tolist() == [4., 5.]


def test_top_p_and_top_k():
    logits = torch.tensor([[0.1, 0.5, 0.15, 0.25]]).log()
    assert top_p_filter(logits, 0.6).isfinite()[0].tolist() == [False, True, False, True]
    assert top_p_filter(logits, 0.7).isfinite()[0].tolist() == [False, True, False, True]
    assert top_p_filter(logits, 0.8).isfinite()[0].tolist() == [False, True, True, True]
    assert top_p_filter(logits, 1e-6).isfinite().sum() == 1
    assert top_k_filter(torch.tensor([[3., 1., 2., 2., 0.]]), 2).isfinite()[0].tolist() == [True, False, True, True, False]
    z = torch.randn(1, 8)
    draws = sample_next(z.expand(20_000, -1), 1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=8) / 20_000
    torch.testing.assert_close(freq, top_p_filter(z, 0.7).softmax(-1)[0], atol=0.015, rtol=0)
    assert sample_next(z, 0).item() == z.argmax().item()


def test_left_padding_and_positions():
    ids, real = left_pad([[7, 8], [9, 10, 11]])
    assert ids.tolist() == [[0, 7, 8], [9, 10, 11]] and prompt_positions(real).tolist() == [[0, 0, 1], [0, 1, 2]]
    assert not relative_positions(model()) and relative_positions(model(position='rope'))


@torch.no_grad()
def plain_generate(m, idx, n, temperature=1.0, top_k=None, generator=None):
    "The plain loop of notebook 04a: recompute the last block_size tokens every step."
    for _ in range(n):
        logits = m(idx[:, -m.cfg.block_size:])[:, -1].float()
        if temperature == 0: nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None: logits = top_k_filter(logits, top_k)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        idx = torch.cat([idx, nxt], 1)
    return idx


def test_generate_is_the_plain_loop():
    m, p = model(), torch.randint(0, 50, (2, 4))
    ref = plain_generate(m, p, 12, 0.9, 8, torch.Generator().manual_seed(3))
    assert torch.equal(generate(m, p, 12, 0.9, 8, torch.Generator().manual_seed(3), use_cache=False), ref)
    assert torch.equal(generate(m, p, 12, 0.9, 8, torch.Generator().manual_seed(3)), ref)
    long = torch.randint(0, 50, (1, 20))  # past block_size=24: both slide their window
    assert torch.equal(generate(m, long, 10, temperature=0, use_cache=False), plain_generate(m, long, 10, temperature=0))


@pytest.mark.parametrize('position', ['sinusoidal', 'rope'])
@pytest.mark.parametrize('n_kv', [4, 2, 1])
def test_greedy_cache_equals_no_cache_and_batch_equals_alone(position, n_kv):
    m = model(n_kv, position=position)
    p = torch.randint(0, 50, (3, 5))
    assert torch.equal(generate(m, p, 15, temperature=0), generate(m, p, 15, temperature=0, use_cache=False))
    prompts = [[1, 2], [3, 4, 5, 6, 7, 8], [9]]
    batch = generate(m, prompts, 12, temperature=0)
    assert batch == [generate(m, [q], 12, temperature=0)[0] for q in prompts]
    assert batch == generate(m, prompts, 12, temperature=0, use_cache=False)
    assert [len(b) for b in batch] == [14, 18, 13]


def test_stop_tokens_cut_lists_and_fill_tensors():
    m = model()
    prompts = [[1, 2], [3, 4, 5, 6, 7, 8], [9]]
    free = generate(m, prompts, 12, temperature=0)
    s = free[1][6 + 2]  # row 1's third generated token
    out = generate(m, prompts, 12, temperature=0, stop=s)
    for p, f, o in zip(prompts, free, out):
        gen = f[len(p):]
        assert o == (f[:len(p) + gen.index(s) + 1] if s in gen else f)
    t = generate(m, torch.tensor([prompts[1]]), 12, temperature=0, stop=s)
    assert t[0].tolist() == out[1]  # the only row stopped: the loop ended there


def test_rolling_cache_past_block_size_for_relative_positions():
    one = model(2, position='rope', n_layer=1)
    p = torch.randint(0, 50, (2, 10))
    assert torch.equal(generate(one, p, 30, temperature=0), generate(one, p, 30, temperature=0, use_cache=False))
    with pytest.raises(ValueError, match=r"needs 40, and position='sinusoidal' cannot extrapolate.*use use_cache=False"):
        generate(model(), p, 30)


@pytest.mark.parametrize('kwargs, message', [
    (dict(temperature=-0.5), 'temperature=-0.5 must be a finite number >= 0'),
    (dict(top_k=0), 'top_k=0 must be a positive integer or None'),
    (dict(top_p=1.2), r'top_p=1.2 must be a number in \(0, 1\] or None'),
    (dict(stop=[50]), r'stop=\[50\] must be a token id or a non-empty list of token ids in \[0, 50\)'),
    (dict(pad_id=50), r'pad_id=50 must be None or a token id in \[0, 50\)'),
])
def test_generate_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model(), torch.zeros(1, 3, dtype=torch.long), 5, **kwargs)


def test_prompt_errors():
    m = model()
    with pytest.raises(ValueError, match=r'idx must be a \(B, T\) tensor'):
        generate(m, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match='each prompt must be a non-empty list'):
        generate(m, [[1], []], 2)
    with pytest.raises(ValueError, match=r'prompt 0 has token ids outside \[0, 50\)'):
        generate(m, [[1, 50]], 2)
    with pytest.raises(ValueError, match='max_new_tokens=-2 must be an integer >= 0'):
        generate(m, [[1]], -2)


def test_experiment_is_registered_with_three_kv_head_counts():
    exp = EXPERIMENTS['12_gqa_kv_heads']
    specs = plan(exp, 'cpu', vocab_size=66)
    assert [(s.model.n_head, s.model.n_kv_head) for s in specs] == [(4, 4)] * 5 + [(4, 2)] * 5 + [(4, 1)] * 5
    assert len({s.train.max_steps for s in specs}) == 1 and [s.seed for s in specs] == [1, 2, 3, 4, 5] * 3 and exp.tune_lr
