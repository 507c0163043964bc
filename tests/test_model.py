"""The 2017 baseline against PyTorch's own layers, the config's error messages, and attention paths."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinylm import attention as A
from tinylm.model import ModelConfig, Transformer, baseline_2017, to_torch_encoder_layer
from tinylm.generation import generate
from tinylm.core import count_params


def test_attention_paths_agree():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 11, 16).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(A.attend(q, k, v, impl='naive'), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(A.attend(q, k, v), ref, atol=1e-5, rtol=1e-5)
    # keys longer than queries: the queries are the last positions
    torch.testing.assert_close(A.attend(q[:, :, -3:], k, v, impl='naive'), ref[:, :, -3:], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_positions():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 2, 9, 8).unbind(0)
    kp = A.padding_mask([5, 9], 9)
    for impl in A.ATTENTION_IMPLS:
        padded = A.attend(q, k, v, key_padding=kp, impl=impl)
        alone = A.attend(q[:1, :, :5], k[:1, :, :5], v[:1, :, :5], impl=impl)
        torch.testing.assert_close(padded[:1, :, :5], alone, atol=1e-5, rtol=1e-5)


def test_mha_equals_torch_multihead_attention():
    torch.manual_seed(2)
    mha = A.MultiHeadAttention(24, 3)
    ref = nn.MultiheadAttention(24, 3, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.o_proj.weight)
        ref.out_proj.bias.copy_(mha.o_proj.bias)
    x = torch.randn(2, 6, 24)
    expected, _ = ref(x, x, x, attn_mask=~A.causal_mask(6), need_weights=False)
    torch.testing.assert_close(mha(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_postnorm_block_equals_transformer_encoder_layer(bias):
    torch.manual_seed(3)
    cfg = baseline_2017(vocab_size=50, block_size=16, n_layer=3, d_model=48, n_head=6, dropout=0.0, bias=bias)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    idx = torch.randint(0, 50, (2, 16))
    layers = [to_torch_encoder_layer(b, cfg).eval() for b in model.blocks]
    x = model.pos.embed(model.tok_emb(idx) * math.sqrt(48), torch.arange(16))
    mask = nn.Transformer.generate_square_subsequent_mask(16)
    for layer in layers:
        x = layer(x, src_mask=mask, is_causal=True)
    torch.testing.assert_close(model.hidden_states(idx), x, atol=1e-5, rtol=1e-5)


def test_param_count_and_tying():
    cfg = baseline_2017(vocab_size=100, block_size=8, n_layer=2, d_model=16, n_head=2)
    m = Transformer(cfg)
    d = 16
    per_block = 12 * d * d + 13 * d
    assert count_params(m) == dict(total=2 * per_block + 100 * d, embedding=100 * d, non_embedding=2 * per_block)
    untied = Transformer(cfg.replace(tie_embeddings=False))
    assert count_params(untied)['total'] == 2 * per_block + 2 * 100 * d


def test_causality_of_the_whole_model():
    torch.manual_seed(4)
    m = Transformer(baseline_2017(vocab_size=30, block_size=12, n_layer=2, d_model=16, n_head=2, dropout=0.0)).eval()
    a = torch.randint(0, 30, (1, 12))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 30
    torch.testing.assert_close(m(a)[:, :7], m(b)[:, :7])
    assert not torch.allclose(m(a)[:, 7:], m(b)[:, 7:])


@pytest.mark.parametrize('kwargs, message', [
    (dict(d_model=30, n_head=4), 'ModelConfig.n_head=4 must divide d_model=30'),
    (dict(norm='rmsnorm'), "ModelConfig.norm='rmsnorm' is not a known norm; allowed: "),
    (dict(ffn='swish'), "ModelConfig.ffn='swish' is not a known ffn; allowed: "),
    (dict(position='alibi'), "ModelConfig.position='alibi' is not a known position; allowed: "),
    (dict(norm_placement='middle'), "ModelConfig.norm_placement='middle' is not a known norm_placement"),
    (dict(dropout=-0.1), 'ModelConfig.dropout=-0.1 must be in [0, 1)'),
    (dict(n_layer=0), 'ModelConfig.n_layer=0 must be a positive integer'),
    (dict(vocab_size=2.5), 'ModelConfig.vocab_size=2.5 must be an integer'),
    (dict(dropout='0.1'), "ModelConfig.dropout='0.1' must be a finite number, got str"),
    (dict(init_std=float('inf')), 'ModelConfig.init_std=inf must be a finite number'),
    (dict(norm_eps=float('inf')), 'ModelConfig.norm_eps=inf must be a finite number'),
    (dict(n_kv_head=True), 'ModelConfig.n_kv_head=True must be an integer or None, got bool'),
    (dict(attn_softcap=float('nan')), 'ModelConfig.attn_softcap=nan must be a finite number or None'),
    (dict(d_ff=-1), 'ModelConfig.d_ff=-1 must be a positive integer'),
    (dict(attn_impl='flash'), "ModelConfig.attn_impl='flash' is not allowed; allowed: 'sdpa', 'naive'"),
    (dict(bias='yes'), "ModelConfig.bias='yes' must be True or False"),
])
def test_config_errors_name_field_and_allowed_values(kwargs, message):
    with pytest.raises(ValueError) as e:
        ModelConfig(**kwargs)
    assert message in str(e.value)


def test_from_dict_needs_a_dict():
    with pytest.raises(ValueError, match='ModelConfig.from_dict needs a dict of fields, got NoneType'):
        ModelConfig.from_dict(None)


def test_config_round_trip_and_unknown_fields():
    cfg = baseline_2017(n_layer=3, d_model=64)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match='unknown ModelConfig field'):
        ModelConfig.from_dict({**cfg.to_dict(), 'n_layers': 3})


def test_generate_greedy_is_deterministic_and_respects_top_k():
    torch.manual_seed(5)
    m = Transformer(baseline_2017(vocab_size=20, block_size=8, n_layer=1, d_model=16, n_head=2))
    start = torch.zeros(1, 1, dtype=torch.long)
    a = generate(m, start, 12, temperature=0, use_cache=False)   # longer than block_size: the window slides
    assert a.shape == (1, 13) and torch.equal(a, generate(m, start, 12, temperature=0, use_cache=False))
    with torch.no_grad():
        top1 = m(start)[0, -1].argmax().item()
    s = generate(m, start, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert s[0, 1].item() == top1


def test_softmax_from_scratch_matches_torch():
    from tinylm.attention import softmax
    x = torch.randn(5, 6, 7) * 30
    x[0, 0, :3] = float('-inf')
    for dim in (-1, 0, 1):
        assert torch.allclose(softmax(x, dim), torch.softmax(x, dim), atol=1e-6)
    assert torch.allclose(softmax(torch.tensor([1e4, 0.0])), torch.tensor([1.0, 0.0]))


def test_head_width_apart_from_the_model_width():
    "d_head sets the per-head width (notebook 15): n_head x d_head inside attention, d_model outside; RoPE, GQA and the cache follow."
    import tinylm.positions  # noqa: F401  (registers rope)
    from tinylm.generation import generate
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, d_model=24, d_head=10, position='rope', dropout=0.0)
    model = Transformer(cfg).eval()
    attn = model.blocks[0].attn
    assert (attn.q_proj.weight.shape, attn.k_proj.weight.shape, attn.o_proj.weight.shape) == ((40, 24), (20, 24), (24, 40))
    idx = torch.randint(0, 50, (2, 5))
    assert model(idx).shape == (2, 5, 50)
    assert torch.equal(generate(model, idx, 6, temperature=0.0), generate(model, idx, 6, temperature=0.0, use_cache=False))
    with pytest.raises(ValueError, match='d_head=0 must be a positive integer'): ModelConfig(d_head=0)
    with pytest.raises(ValueError, match='head_dim'): ModelConfig(position='rope', d_head=9)


@pytest.mark.parametrize('tied', [True, False])
def test_the_loss_without_logits_is_the_loss_with_them(tied):
    "forward(..., return_logits=False) gives F.cross_entropy's loss and the same gradient on every parameter."
    import tinylm  # noqa: F401  (registers the modern parts)
    cfg = ModelConfig.preset('modern', vocab_size=97, block_size=16, n_layer=2, d_model=32, n_head=4, tie_embeddings=tied)
    torch.manual_seed(0); model = Transformer(cfg)
    x, y = torch.randint(0, 97, (2, 3, 16)).unbind(0); y[0, :5] = -1
    logits, ref = model(x, y)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    none, got = model(x, y, return_logits=False)
    assert none is None and abs(got.item() - ref.item()) < 1e-5
    for (name, _), a, b in zip(model.named_parameters(), ref_grads, torch.autograd.grad(got, list(model.parameters()))):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), name
    model.eval()
    with torch.no_grad(): assert abs(model(x, y, return_logits=False)[1].item() - ref.item()) < 1e-5


@pytest.mark.parametrize('field', [dict(logit_softcap=5.0), dict(z_loss=1e-3)])
def test_the_loss_without_logits_keeps_logit_features(field):
    "A soft-cap on the logits or a z-loss needs the logits: return_logits=False still applies them (and returns no logits)."
    import tinylm  # noqa: F401  (registers the features of notebook 13)
    cfg = ModelConfig.preset('modern', vocab_size=97, block_size=16, n_layer=1, d_model=32, n_head=4, **field)
    torch.manual_seed(0); model = Transformer(cfg)
    x, y = torch.randint(0, 97, (2, 2, 16)).unbind(0)
    logits, ref = model(x, y)
    none, got = model(x, y, return_logits=False)
    assert none is None and got.item() == pytest.approx(ref.item(), abs=1e-6)
    plain = F.cross_entropy(logits.view(-1, 97), y.view(-1)).item()
    assert (got.item() != pytest.approx(plain, abs=1e-7)) == ('z_loss' in field)   # the z-loss is added while training
