"""Position schemes (notebook 11): RoPE is relative and matches explicit rotations and the interleaved convention,
learned and scaled-sinusoidal init, NoPE, the embedding norm, the preset, probes and error messages."""
import math

import pytest
import torch
from torch import nn

import tinylm
from tinylm.attention import MultiHeadAttention
from tinylm.model import MODEL_PRESETS, POSITIONS, ModelConfig, Transformer, baseline_2017, sinusoidal_table
from tinylm.positions import RotaryQK, apply_rope, rope_cos_sin, rope_frequencies, rope_halves_to_interleaved, rope_interleaved_to_halves, rope_pair_permutation, rotate_half
from tinylm.studies.positions import extrapolation_probes, position_losses, with_final_probes


def small(**kw):
    return ModelConfig(**{**dict(vocab_size=40, block_size=64, n_layer=2, d_model=32, n_head=4, dropout=0.0), **kw})


def rotation_matrix(p, hd, base=10_000.0):
    theta, h = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd), hd // 2
    R = torch.zeros(hd, hd, dtype=torch.float64)
    for i in range(h):
        c, s = math.cos(p * theta[i]), math.sin(p * theta[i])
        R[i, i], R[i, i + h], R[i + h, i], R[i + h, i + h] = c, -s, s, c
    return R


def rope_interleaved(x, pos, base=10_000.0):
    """Meta / RoFormer RoPE written independently with complex numbers."""
    hd = x.size(-1)
    theta = 1.0 / base ** (torch.arange(0, hd, 2).float() / hd)
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], hd // 2, 2))
    rot = torch.polar(torch.ones(len(pos), hd // 2), pos.float()[:, None] * theta)
    return torch.view_as_real(z * rot).flatten(-2)


def test_all_schemes_registered():
    assert {'sinusoidal', 'learned', 'scaled_sinusoidal', 'rope', 'none'} <= set(POSITIONS)
    assert MODEL_PRESETS['rope']().to_dict() == baseline_2017(position='rope').to_dict()


def test_rope_equals_explicit_rotation_and_keeps_norms():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 3, 9, 16).unbind(0)
    pos = torch.arange(9) * 37
    rq, rk = RotaryQK(16)(q, k, pos)
    for t in range(9):
        R = rotation_matrix(pos[t].item(), 16)
        torch.testing.assert_close(rq[0, :, t].double(), q[0, :, t].double() @ R.T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotate_half(torch.arange(4.)), torch.tensor([-2., -3., 0., 1.]))
    torch.testing.assert_close(rope_frequencies(8), torch.tensor([1.0, 0.1, 0.01, 0.001]))


def test_rope_score_depends_only_on_offset():
    torch.manual_seed(1)
    hd = 32
    q, k = torch.randn(2, 1, 1, 1, hd).unbind(0)
    rot = RotaryQK(hd)

    def score(m, n):
        return (rot(q, q, torch.tensor([m]))[0] @ rot(k, k, torch.tensor([n]))[1].transpose(-1, -2)).item()

    for offset in (0, 5, 31):
        ref = score(offset, 0)
        for c in (1, 64, 999):
            assert score(offset + c, c) == pytest.approx(ref, abs=2e-3)
    assert abs(score(5, 0) - score(31, 0)) > 0.05


def test_interleaved_to_halves_permutation_on_weights():
    torch.manual_seed(2)
    d, H = 32, 4
    hd = d // H
    assert rope_pair_permutation(hd).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    x, pos = torch.randn(1, 10, d), torch.arange(10)
    attn = MultiHeadAttention(d, H)
    for p in attn.parameters(): nn.init.normal_(p, std=0.3)

    def qk(wq, bq, wk, bk):
        q = attn.split_heads(x @ wq.T + bq)
        k = attn.split_heads(x @ wk.T + bk)
        return q, k

    q, k = qk(attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias)
    ref = rope_interleaved(q, pos) @ rope_interleaved(k, pos).transpose(-1, -2)
    conv = [rope_interleaved_to_halves(t, H) for t in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias)]
    q2, k2 = RotaryQK(hd)(*qk(*conv), pos)
    torch.testing.assert_close(q2 @ k2.transpose(-1, -2), ref, atol=1e-4, rtol=1e-4)
    w = attn.q_proj.weight.detach()
    assert torch.equal(rope_halves_to_interleaved(rope_interleaved_to_halves(w, H), H), w)
    # without the permutation the scores differ
    q3, k3 = RotaryQK(hd)(q, k, pos)
    assert (q3 @ k3.transpose(-1, -2) - ref).abs().max() > 1e-2


def test_rope_model_is_shift_invariant_and_cache_consistent():
    torch.manual_seed(3)
    model = Transformer(small(position='rope')).eval()
    idx = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(model(idx), model(idx, pos=torch.arange(16) + 500), atol=1e-4, rtol=1e-4)
    sin = Transformer(small()).eval()
    assert (sin(idx) - sin(idx, pos=torch.arange(16) + 20)).abs().max() > 1e-2
    nope = Transformer(small(position='none')).eval()
    nope.load_state_dict(model.state_dict())
    assert (nope(idx) - model(idx)).abs().max() > 1e-4
    assert not [k for k in model.state_dict() if k.startswith('pos')]

    class Cache:
        def __init__(self, n): self.kv = [[None, None] for _ in range(n)]
        def __getitem__(self, i):
            kv = self.kv[i]
            class Layer:
                def update(_, k, v):
                    kv[0] = k if kv[0] is None else torch.cat([kv[0], k], 2)
                    kv[1] = v if kv[1] is None else torch.cat([kv[1], v], 2)
                    return kv[0], kv[1]
            return Layer()
        @property
        def seq_len(self): return 0 if self.kv[0][0] is None else self.kv[0][0].size(2)

    cache = Cache(2)
    steps = torch.cat([model(idx[:, :5], cache=cache)] + [model(idx[:, t:t + 1], cache=cache) for t in range(5, 16)], 1)
    torch.testing.assert_close(steps, model(idx), atol=1e-5, rtol=1e-5)


def test_rope_batched_positions_and_float32_angles():
    torch.manual_seed(4)
    q, k = torch.randn(2, 3, 2, 5, 8).unbind(0)
    pos = torch.stack([torch.arange(5), torch.arange(5) + 7, torch.arange(5) + 4000])
    rq, rk = RotaryQK(8)(q, k, pos)
    for b in range(3):
        eq, ek = RotaryQK(8)(q[b:b + 1], k[b:b + 1], pos[b])
        torch.testing.assert_close(rq[b:b + 1], eq)
        torch.testing.assert_close(rk[b:b + 1], ek)
    cos, sin = rope_cos_sin(torch.tensor([3000], dtype=torch.long), 8)
    assert cos.dtype == sin.dtype == torch.float32
    out = apply_rope(q.bfloat16(), *rope_cos_sin(torch.arange(5), 8))
    assert out.dtype == torch.bfloat16


def test_learned_positions_init_like_token_embedding():
    torch.manual_seed(5)
    m = Transformer(small(position='learned', d_model=64))
    assert m.pos.emb.weight.shape == (64, 64)
    assert m.pos.emb.weight.std().item() == pytest.approx(64 ** -0.5, abs=0.01)
    x = torch.zeros(1, 4, 64)
    torch.testing.assert_close(m.pos.embed(x, torch.arange(4)), 8 * m.pos.emb.weight[:4][None])
    u = Transformer(small(position='learned', d_model=64, scale_embeddings=False))
    assert u.pos.emb.weight.std().item() == pytest.approx(0.02, abs=0.002)


def test_scaled_sinusoidal_init():
    m = Transformer(small(position='scaled_sinusoidal', d_model=64))
    assert m.pos.gain.item() == pytest.approx(1 / 8)
    x, p = torch.zeros(1, 6, 64), torch.arange(6)
    torch.testing.assert_close(m.pos.embed(x, p)[0], sinusoidal_table(64, 64)[:6])  # sqrt(d) * d**-0.5 = 1
    u = Transformer(small(position='scaled_sinusoidal', d_model=64, scale_embeddings=False))
    torch.testing.assert_close(u.pos.embed(x, p)[0], sinusoidal_table(64, 64)[:6] / 8)  # cramming: PE / sqrt(d)


def test_emb_norm_normalizes_embedding_block():
    torch.manual_seed(6)
    m = Transformer(small(position='learned', emb_norm=True))
    idx = torch.randint(0, 40, (4, 20))
    h = m.emb_norm(m.pos.embed(m.tok_emb(idx) * math.sqrt(32), torch.arange(20)))
    torch.testing.assert_close(h.pow(2).mean(-1), torch.ones(4, 20), atol=1e-3, rtol=1e-3)


def test_nope_one_layer_sees_a_set_two_layers_see_order():
    torch.manual_seed(7)
    a = torch.randint(0, 40, (1, 10))
    b = a.clone(); b[0, [2, 5]] = a[0, [5, 2]]
    diffs = []
    for n_layer in (1, 2):
        m = Transformer(small(position='none', n_layer=n_layer)).eval()
        for p in m.parameters(): nn.init.normal_(p, std=0.3)
        diffs.append((m(a)[0, -1] - m(b)[0, -1]).abs().max().item())
    assert diffs[0] < 1e-4 and diffs[1] > 1e-2


def test_position_losses_mean_is_evaluate():
    from tinylm.training import evaluate

    class Data:
        vocab_size = 40
        def get_batch(self, split, B, T, generator=None, device='cpu'):
            x = torch.randint(0, 40, (B, T + 1), generator=generator)
            return x[:, :-1], x[:, 1:]

    m = Transformer(small(position='rope'))
    pl = position_losses(m, Data(), 'val', 3, 4, 64, seed=9)
    assert pl.shape == (64,)
    assert pl.mean().item() == pytest.approx(evaluate(m, Data(), 'val', 3, 4, 64, seed=9), abs=1e-5)
    assert set(extrapolation_probes(4)) == {'val_loss_2x', 'val_loss_far', 'pos_loss_0', 'pos_loss_1', 'pos_loss_2', 'pos_loss_3'}


def test_with_final_probes_takes_last_eval_record():
    res = {'runs': {'a/seed=0': {'final': {'val_loss': 2.0}, 'curves': [
        {'step': 10, 'train_loss': 3.0}, {'step': 50, 'val_loss': 2.5, 'val_loss_2x': 4.0},
        {'step': 100, 'val_loss': 2.0, 'val_loss_2x': 3.5}]}}}
    out = with_final_probes(res)
    assert out['runs']['a/seed=0']['final'] == {'val_loss': 2.0, 'val_loss_2x': 3.5}
    assert 'val_loss_2x' not in res['runs']['a/seed=0']['final']  # the input is not changed


def test_errors():
    with pytest.raises(ValueError, match=r"position='rope' needs an even head_dim .* d_model=12 / n_head=4 gives head_dim=3"):
        ModelConfig(d_model=12, n_head=4, position='rope')
    ModelConfig(d_model=12, n_head=4)  # odd head_dim is fine without RoPE
    assert tinylm.model.POSITIONS['rope'].relative and not tinylm.model.POSITIONS['learned'].relative
    with pytest.raises(ValueError, match="ModelConfig.position='alibi' is not a known position"):
        ModelConfig(position='alibi')
    with pytest.raises(ValueError, match='RoPE needs an even head_dim, got head_dim=5'):
        rope_pair_permutation(5)
