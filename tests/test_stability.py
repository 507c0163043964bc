"""Notebook 13: soft-capping, z-loss, QK-norm, the logit probes and LR sensitivity."""
import math

import pytest
import torch
import torch.nn.functional as F

import tinylm
from tinylm.attention import causal_mask, naive_attention
from tinylm.experiments import EXPERIMENTS, plan
from tinylm.model import FEATURES, NORMS, ModelConfig, Transformer
from tinylm.studies.stability import STABILITY_EXPERIMENT, STABILITY_PROBES, logit_stats, lr_sensitivity
from tinylm.stability import softcap, z_loss

CFG = ModelConfig(vocab_size=40, block_size=16, n_layer=2, d_model=32, n_head=4, dropout=0.0, bias=False,
                  tie_embeddings=False)


def test_features_are_registered():
    assert FEATURES['attn_softcap'].fn is softcap and FEATURES['attn_softcap'].hook == 'scores'
    assert FEATURES['logit_softcap'].fn is softcap and FEATURES['logit_softcap'].hook == 'logits'
    assert FEATURES['z_loss'].fn is z_loss and FEATURES['z_loss'].hook == 'loss'
    assert {'rms', 'layer'} <= set(NORMS)   # what qk_norm may name, besides 'none'


def test_softcap_bounded_and_identity_near_zero():
    x = torch.linspace(-500, 500, 1001)
    y = softcap(x, 20.0)
    assert y.abs().max() <= 20.0
    torch.testing.assert_close(y, 20.0 * torch.tanh(x / 20.0))
    small = torch.linspace(-0.5, 0.5, 11)
    assert (softcap(small, 20.0) - small).abs().max() <= 0.5 ** 3 / (3 * 20.0 ** 2) + 1e-7
    with pytest.raises(ValueError, match='softcap: cap=-1.0 must be a number > 0'):
        softcap(x, -1.0)


def test_z_loss_by_hand_and_gradient():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, -1.0, 0.5]])
    targets = torch.tensor([2, -1, 0])
    lz = [math.log(math.exp(1) + math.exp(2) + math.exp(3)), math.log(math.exp(5) + math.exp(-1) + math.exp(0.5))]
    assert z_loss(logits, targets).item() == pytest.approx((lz[0] ** 2 + lz[1] ** 2) / 2, rel=1e-6)
    assert z_loss(logits.double(), targets).dtype == torch.float32
    y = logits[0].clone().requires_grad_()
    z_loss(y, torch.tensor(1)).backward()
    torch.testing.assert_close(y.grad, 2 * lz[0] * torch.softmax(logits[0], -1))
    assert z_loss(logits.log_softmax(-1), targets).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match='do not match logits of shape'):
        z_loss(logits, targets[:2])


def test_eval_loss_excludes_z_loss():
    torch.manual_seed(0)
    model = Transformer(CFG.replace(z_loss=1e-3))
    idx, targets = torch.randint(0, 40, (2, 2, 16)).unbind(0)
    targets[1, -4:] = -1
    model.train(); logits, train_loss = model(idx, targets)
    model.eval(); _, eval_loss = model(idx, targets)
    plain = F.cross_entropy(logits.view(-1, 40), targets.view(-1), ignore_index=-1)
    assert eval_loss.item() == pytest.approx(plain.item(), abs=1e-6)
    assert (train_loss - eval_loss).item() == pytest.approx(1e-3 * z_loss(logits, targets).item(), abs=1e-6)


@pytest.mark.parametrize('name', ['rms', 'layer'])
def test_qk_norm_unit_rms_per_head(name):
    torch.manual_seed(1)
    attn = Transformer(CFG.replace(qk_norm=name, n_kv_head=2)).blocks[0].attn   # fewer key heads (grouped-query) is fine
    assert attn.q_norm.weight.shape == (CFG.head_dim,)
    q, k, _ = attn.project(4 * torch.randn(2, 6, 32) + 2)
    torch.testing.assert_close(q.pow(2).mean(-1), torch.ones(2, 4, 6), atol=1e-3, rtol=0)
    torch.testing.assert_close(k.pow(2).mean(-1), torch.ones(2, 2, 6), atol=1e-3, rtol=0)


def test_rms_qk_norm_is_torch_rms_norm_over_head_dim():
    torch.manual_seed(2)
    attn = Transformer(CFG.replace(qk_norm='rms')).blocks[0].attn
    with torch.no_grad(): attn.q_norm.weight.normal_(); attn.k_norm.weight.normal_()
    x = torch.randn(2, 5, 32)
    q, k, _ = attn.project(x)
    torch.testing.assert_close(q, F.rms_norm(attn.split_heads(attn.q_proj(x)), (8,), attn.q_norm.weight, eps=CFG.norm_eps))
    torch.testing.assert_close(k, F.rms_norm(attn.split_heads(attn.k_proj(x)), (8,), attn.k_norm.weight, eps=CFG.norm_eps))


def test_qk_norm_sits_before_the_position_transform_and_has_no_decay():
    model = Transformer(CFG.replace(qk_norm='rms', position='rope'))
    attn = model.blocks[0].attn
    torch.manual_seed(4)
    x, pos = torch.randn(1, 6, 32), torch.arange(6)
    q, k, _ = attn.project(x, pos)
    qn, kn = attn.q_norm(attn.split_heads(attn.q_proj(x))), attn.k_norm(attn.split_heads(attn.k_proj(x)))
    rq, rk = attn.rotary(qn, kn, pos)                       # norm first, then the rotation
    torch.testing.assert_close(q, rq); torch.testing.assert_close(k, rk)
    names = [n for n, _ in model.named_parameters()]
    assert 'blocks.0.attn.q_norm.weight' in names and 'blocks.0.attn.k_norm.weight' in names
    from tinylm.training import param_groups
    decayed = {id(p) for p in param_groups(model, 0.1)[0]['params']}
    assert id(attn.q_norm.weight) not in decayed


def test_bad_values_fail_with_the_field_name():
    with pytest.raises(ValueError, match="ModelConfig.qk_norm='batch' is not allowed; allowed: 'none' or a norm: 'layer', 'rms'"):
        ModelConfig(qk_norm='batch')
    with pytest.raises(ValueError, match=r'ModelConfig.attn_softcap=0 must be None or a number > 0'):
        ModelConfig(attn_softcap=0)
    with pytest.raises(ValueError, match=r'ModelConfig.z_loss=-1.0 must be a number >= 0'):
        ModelConfig(z_loss=-1.0)


def test_attention_softcap_is_applied_to_scores():
    torch.manual_seed(3)
    attn = Transformer(CFG.replace(attn_softcap=1.5)).blocks[1].attn.eval()
    x = torch.randn(2, 16, 32)
    q, k, v = (attn.split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    y = naive_attention(q, k, v, causal_mask(16), score_mod=lambda s: 1.5 * torch.tanh(s / 1.5))
    torch.testing.assert_close(attn(x), attn.o_proj(y.transpose(1, 2).reshape(2, 16, 32)), atol=1e-5, rtol=1e-5)


def test_logit_stats_quadratic_without_and_bounded_with_qk_norm():
    torch.manual_seed(4)
    idx = torch.randint(0, 40, (2, 16))
    for qk_norm in ('none', 'rms'):
        cfg = CFG.replace(n_layer=1, qk_norm=qk_norm)
        base = Transformer(cfg).eval()
        stats = []
        for alpha in (1.0, 3.0):
            m = Transformer(cfg).eval(); m.load_state_dict(base.state_dict())
            with torch.no_grad(): m.blocks[0].attn.q_proj.weight.mul_(alpha); m.blocks[0].attn.k_proj.weight.mul_(alpha)
            stats.append(logit_stats(m, idx))
        ratio = stats[1]['max_attn_logit'] / stats[0]['max_attn_logit']
        if qk_norm == 'none': assert ratio == pytest.approx(9.0, rel=1e-4)
        else:
            assert ratio == pytest.approx(1.0, rel=1e-2)   # not exactly 1: the norm's eps matters for small q, k
            assert stats[1]['max_attn_logit'] <= math.sqrt(cfg.head_dim)
    s = logit_stats(Transformer(CFG).eval(), idx)
    assert s['mean_log_z'] == pytest.approx(math.log(40), abs=0.05)
    assert 0 < s['min_attn_entropy'] <= math.log(16)


def _run(lr, loss, status='ok', **over):
    return dict(variant=f'lr={lr}', overrides={**over, 'lr': lr}, status=status, final=dict(val_loss=loss),
                train_config=dict(lr=lr), model_config={})


def test_lr_sensitivity_definition():
    res = dict(data=dict(vocab_size=100), runs={
        'a': _run(1e-3, 3.0), 'b': _run(1e-2, 2.0), 'c': _run(1e-1, float('nan'), 'diverged'),
        'd': _run(1e-3, 3.1, qk_norm='rms'), 'e': _run(1e-2, 2.2, qk_norm='rms'), 'f': _run(1e-1, 2.4, qk_norm='rms')})
    s = lr_sensitivity(res)
    l0 = math.log(100)
    assert s['all']['sensitivity'] == pytest.approx((3.0 + 2.0 + l0) / 3 - 2.0)
    assert s['all']['diverged'] == 1 and s['all']['best'] == 1e-2
    assert s['qk_norm=rms']['sensitivity'] == pytest.approx((3.1 + 2.2 + 2.4) / 3 - 2.2)
    assert s['qk_norm=rms']['sensitivity'] < s['all']['sensitivity']
    assert lr_sensitivity(res, init_loss=2.5)['all']['sensitivity'] == pytest.approx((2.5 + 2.0 + 2.5) / 3 - 2.0)


def test_experiment_is_registered():
    assert EXPERIMENTS['13_stability_lr'] is STABILITY_EXPERIMENT
    specs = plan(STABILITY_EXPERIMENT, 'cpu', vocab_size=65)
    assert len(specs) == 72 and {s.seed for s in specs} == {1, 2, 3}   # the whole sweep for each comparison seed
    assert {(s.model.norm_placement, s.model.norm, s.model.bias) for s in specs} == {('pre', 'rms', False)}
    assert {s.train.lr for s in specs} == {1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1}
    assert {(s.model.qk_norm, s.model.z_loss) for s in specs} == {('none', 0.0), ('rms', 0.0), ('none', 1e-4), ('rms', 1e-4)}
    assert set(STABILITY_EXPERIMENT.probes) == {'max_attn_logit', 'min_attn_entropy', 'max_output_logit', 'mean_log_z'}
