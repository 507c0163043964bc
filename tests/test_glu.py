"""Notebook 10: GELU/SiLU feed-forwards, the gated ReGLU/GeGLU/SwiGLU, their widths, presets and experiment."""
import math

import pytest
import torch
import torch.nn.functional as F

import tinylm
from tinylm.core import count_params
from tinylm.experiments import EXPERIMENTS, plan
from tinylm.studies.glu import GLU_EXPERIMENT, GLU_PAIRS
from tinylm.glu import GatedMLP, SwiGLU, gated_width, gelu_tanh
from tinylm.model import FFNS, MODEL_PRESETS, ModelConfig, Transformer, baseline_2017

PLAIN = {'relu': F.relu, 'gelu': lambda t: F.gelu(t, approximate='none'),
         'gelu_tanh': lambda t: F.gelu(t, approximate='tanh'), 'silu': F.silu}
GATED = {'reglu': F.relu, 'geglu': lambda t: F.gelu(t, approximate='none'), 'swiglu': F.silu}


def test_gelu_tanh_is_gpt2_gelu_new():
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    gelu_new = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    torch.testing.assert_close(gelu_tanh(x), gelu_new, atol=1e-12, rtol=0)
    # and it is not the exact GELU
    assert (gelu_tanh(x) - F.gelu(x)).abs().max() > 1e-4


@pytest.mark.parametrize('name', list(PLAIN))
def test_plain_ffns_match_hand_written(name):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=48, n_head=4, ffn=name)
    ffn = FFNS[name](cfg)
    for m in (ffn.up_proj, ffn.down_proj): torch.nn.init.normal_(m.bias)
    x = torch.randn(3, 7, 48)
    expected = PLAIN[name](x @ ffn.up_proj.weight.T + ffn.up_proj.bias) @ ffn.down_proj.weight.T + ffn.down_proj.bias
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert cfg.ffn_width == 4 * 48


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('name', list(GATED))
def test_gated_ffns_match_hand_written(name, bias):
    torch.manual_seed(1)
    cfg = ModelConfig(d_model=48, n_head=4, ffn=name, bias=bias)
    ffn = FFNS[name](cfg)
    assert isinstance(ffn, GatedMLP)
    lin = (ffn.gate_proj, ffn.up_proj, ffn.down_proj)
    if bias:
        for m in lin: torch.nn.init.normal_(m.bias)
    b = [m.bias if bias else 0.0 for m in lin]
    x = torch.randn(3, 7, 48)
    expected = (GATED[name](x @ ffn.gate_proj.weight.T + b[0]) * (x @ ffn.up_proj.weight.T + b[1])) @ ffn.down_proj.weight.T + b[2]
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert ffn.gate_proj.weight.shape == (128, 48)   # 8/3 * 48 = 128 exactly


def test_gated_base_class_is_torch_glu():
    torch.manual_seed(2)
    g = GatedMLP(ModelConfig(d_model=32, n_head=4, bias=False, d_ff=40))
    x = torch.randn(2, 5, 32)
    ref = F.glu(torch.cat([x @ g.up_proj.weight.T, x @ g.gate_proj.weight.T], -1), dim=-1) @ g.down_proj.weight.T
    torch.testing.assert_close(g(x), ref, atol=1e-6, rtol=1e-6)


def test_gated_width_rule():
    assert [gated_width(d) for d in (32, 128, 512, 768, 4096)] == [88, 344, 1368, 2048, 10920]
    assert gated_width(128, multiple_of=64) == 320 and gated_width(128, multiple_of=1) == 341
    for d in range(2, 1025):
        h = gated_width(d)
        assert h % 8 == 0 and abs(3 * d * h - 8 * d * d) <= 8 * d
    assert SwiGLU.default_width(128) == 344
    for bad, msg in [((128, 0), 'multiple_of=0'), ((0,), 'd_model=0'), ((128.0,), 'd_model=128.0'), ((128, True), 'multiple_of=True')]:
        with pytest.raises(ValueError, match=msg): gated_width(*bad)


def test_parameters_matched_within_the_rounding():
    d = 128
    cfgs = {name: baseline_2017(vocab_size=66, block_size=32, d_model=d, n_head=4, ffn=name) for name in (*PLAIN, *GATED)}
    with torch.device('meta'): models = {n: Transformer(c) for n, c in cfgs.items()}   # shapes only
    ffn_params = {n: sum(p.numel() for p in m.blocks[0].ffn.parameters()) for n, m in models.items()}
    assert ffn_params['relu'] == 2 * d * 4 * d + 4 * d + d
    assert ffn_params['swiglu'] == 3 * d * 344 + 2 * 344 + d
    for g, p in GLU_PAIRS.items():
        assert ffn_params[g] == ffn_params['swiglu'] and ffn_params[p] == ffn_params['relu']
        assert abs(ffn_params[g] / ffn_params[p] - 1) < 1 / d + 0.002   # the rounding's 1/d, plus biases
        total = {v: count_params(models[v])['total'] for v in (g, p)}
        assert abs(total[g] / total[p] - 1) < 0.01


def test_init_and_names():
    torch.manual_seed(3)
    cfg = baseline_2017(vocab_size=66, block_size=16, d_model=128, n_layer=2, n_head=4, ffn='swiglu')
    model = Transformer(cfg)
    names = [n for n, _ in model.named_parameters() if n.startswith('blocks.0.ffn.')]
    assert names == [f'blocks.0.ffn.{p}.{w}' for p in ('gate_proj', 'up_proj', 'down_proj') for w in ('weight', 'bias')]
    ffn = model.blocks[0].ffn
    assert abs(ffn.gate_proj.weight.std().item() - 0.02) < 0.001
    assert abs(ffn.down_proj.weight.std().item() - 0.02 / math.sqrt(4)) < 0.001   # residual projection, 1/sqrt(2L)
    logits, loss = model(torch.randint(0, 66, (2, 16)), torch.randint(0, 66, (2, 16)))
    assert logits.shape == (2, 16, 66) and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in ffn.parameters())


def test_explicit_d_ff_overrides_the_default():
    cfg = ModelConfig(d_model=64, n_head=4, ffn='geglu', d_ff=100)
    ffn = FFNS['geglu'](cfg)
    assert ffn.gate_proj.out_features == ffn.up_proj.out_features == ffn.down_proj.in_features == 100


def test_bad_ffn_names_fail_with_the_allowed_list():
    with pytest.raises(ValueError, match=r"ModelConfig\.ffn='swiglu2' is not a known ffn; allowed: .*'gelu_tanh'.*'swiglu'"):
        ModelConfig(ffn='swiglu2')
    with pytest.raises(ValueError, match="ModelConfig.ffn='GELU'"):
        ModelConfig(ffn='GELU')
    for name in ('relu', 'gelu', 'gelu_tanh', 'silu', 'reglu', 'geglu', 'swiglu'):
        assert name in FFNS


def test_presets():
    for name in ('swiglu', 'geglu', 'reglu'):
        cfg = MODEL_PRESETS[name](d_model=128)
        assert cfg == baseline_2017(d_model=128, ffn=name) and cfg.ffn_width == 344
    assert tinylm.ModelConfig.preset('swiglu', n_layer=2).n_layer == 2


def test_experiment_is_registered_and_matched():
    assert EXPERIMENTS['10_glu'] is GLU_EXPERIMENT and GLU_EXPERIMENT.notebook == '10_glu'
    specs = plan(GLU_EXPERIMENT, 'cpu', vocab_size=66)
    assert GLU_EXPERIMENT.tune_lr and len(specs) == 30 and {s.seed for s in specs} == {1, 2, 3, 4, 5}
    assert {s.variant: s.model.ffn for s in specs} == {n: n for n in ('relu', 'gelu', 'silu', 'reglu', 'geglu', 'swiglu')}
    assert len({s.train.max_steps * s.tokens_per_step for s in specs}) == 1   # equal tokens
    widths = {s.variant: s.model.ffn_width for s in specs}
    assert widths['relu'] == 256 and widths['swiglu'] == 168     # 8/3 x 64 = 170.7, to the nearest multiple of 8
