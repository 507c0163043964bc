"""Hugging Face interop (notebook 14a): tinylm <-> transformers Llama and GPT-2 with equal logits, on tiny random configs.

Needs the optional extra (`pip install "tinylm[hf]"`); without transformers only the checks that need no
transformers run, the rest are skipped by `pytest.importorskip`, never silently when it is installed."""
import sys

import pytest
import torch

from tinylm.model import ModelConfig, Transformer
from tinylm.modern import gpt2, modern_recipe
from tinylm.hf import check_exportable, config_from_gpt2, config_from_llama, from_hf_gpt2, from_hf_llama, gpt2_config, gpt2_rules, llama_config, llama_rules, require_transformers, to_hf_gpt2, to_hf_llama

SIZES = dict(vocab_size=61, block_size=24, n_layer=2, d_model=32, n_head=4)


def perturb_(model, std=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters(): p.add_(std * torch.randn(p.shape, generator=g))
    return model


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- no transformers needed ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('cfg, target, message', [
    (modern_recipe(norm_placement='post'), 'Llama', "ModelConfig.norm_placement='post' cannot be exported to a Hugging Face Llama model; allowed: 'pre'"),
    (modern_recipe(norm_placement='parallel'), 'Llama', "ModelConfig.norm_placement='parallel'"),
    (modern_recipe(qk_norm='rms'), 'Llama', "ModelConfig.qk_norm='rms' cannot be exported"),
    (modern_recipe(attn_softcap=50.0), 'Llama', 'ModelConfig.attn_softcap=50.0'),
    (modern_recipe(logit_softcap=30.0), 'Llama', 'ModelConfig.logit_softcap=30.0'),
    (modern_recipe(bias=True), 'Llama', 'ModelConfig.bias=True cannot be exported to a Hugging Face Llama model; allowed: False'),
    (modern_recipe(position='learned'), 'Llama', "ModelConfig.position='learned'"),
    (gpt2(position='rope'), 'GPT-2', "ModelConfig.position='rope' cannot be exported to a Hugging Face GPT-2 model; allowed: 'learned'"),
    (gpt2(norm='rms'), 'GPT-2', "ModelConfig.norm='rms'"),
    (gpt2(bias=False), 'GPT-2', 'ModelConfig.bias=False'),
    (gpt2(ffn='swiglu'), 'GPT-2', "ModelConfig.ffn='swiglu'"),
    (gpt2(n_kv_head=2), 'GPT-2', 'ModelConfig.n_kv_head=2 cannot be exported to a Hugging Face GPT-2 model; allowed: None, 4'),
    (gpt2(d_head=16), 'GPT-2', 'ModelConfig.d_head=16 cannot be exported to a Hugging Face GPT-2 model; allowed: None, 32'),
    (ModelConfig(), 'GPT-2', "ModelConfig.norm_placement='post'"),
])
def test_unrepresentable_configs_are_refused(cfg, target, message):
    with pytest.raises(ValueError) as e: check_exportable(cfg, target)
    assert message in str(e.value)


def test_presets_are_exportable():
    check_exportable(modern_recipe(), 'Llama'); check_exportable(modern_recipe(n_kv_head=1, tie_embeddings=True), 'Llama')
    check_exportable(gpt2(), 'GPT-2'); check_exportable(gpt2(tie_embeddings=False), 'GPT-2')


def test_rules_cover_every_parameter_once():
    for cfg, rules in ((modern_recipe(**SIZES), llama_rules), (modern_recipe(**SIZES, tie_embeddings=True), llama_rules),
                       (gpt2(**SIZES), gpt2_rules), (gpt2(**SIZES, tie_embeddings=False), gpt2_rules)):
        names = [n for _, ns, _ in rules(cfg) for n in ns]
        assert sorted(names) == sorted(n for n, _ in Transformer(cfg).named_parameters())


def test_missing_transformers_gives_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'transformers', None)
    with pytest.raises(ImportError, match=r'pip install "tinylm\[hf\]"'): require_transformers()
    with pytest.raises(ImportError, match=r'tinylm\[hf\]'): to_hf_llama(Transformer(modern_recipe(**SIZES)))


# --- with transformers ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tf():
    tf = pytest.importorskip('transformers')
    tf.utils.logging.disable_progress_bar()
    return tf


@pytest.fixture
def idx():
    return torch.randint(0, SIZES['vocab_size'], (2, SIZES['block_size']), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('over', [{}, dict(n_kv_head=1), dict(n_kv_head=4), dict(tie_embeddings=True), dict(ffn='geglu', d_ff=40),
                                  dict(ffn='reglu', rope_base=500_000.0, norm_eps=1e-6), dict(d_head=16), dict(d_head=4, n_kv_head=2)])
def test_llama_export_same_logits_and_round_trip(tf, idx, over):
    torch.manual_seed(0)
    model = perturb_(Transformer(modern_recipe(**SIZES, **over))).eval()
    hf = to_hf_llama(model)
    assert isinstance(hf, tf.LlamaForCausalLM) and hf.config.num_key_value_heads == model.cfg.kv_heads
    torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
    back = from_hf_llama(hf)
    assert back.cfg == model.cfg and same_state(back, model)


def test_llama_import_same_logits(tf, idx):
    torch.manual_seed(1)
    hf = perturb_(tf.LlamaForCausalLM(llama_config(modern_recipe(**SIZES), rope_theta=1000.0)), seed=1).eval()
    model = from_hf_llama(hf).eval()
    assert model.cfg.rope_base == 1000.0 and model.cfg.kv_heads == 2
    torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_llama_save_pretrained_round_trip(tf, idx, tmp_path):
    model = perturb_(Transformer(modern_recipe(**SIZES))).eval()
    to_hf_llama(model).save_pretrained(tmp_path)
    assert (tmp_path / 'model.safetensors').exists() and (tmp_path / 'config.json').exists()
    loaded = tf.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
    assert same_state(from_hf_llama(loaded), model)


def test_llama_greedy_generation_agrees(tf, idx):
    from tinylm.generation import generate
    model = perturb_(Transformer(modern_recipe(**SIZES))).eval()
    hf = to_hf_llama(model)
    prompt = idx[:, :4]
    assert torch.equal(generate(model, prompt, 10, temperature=0), hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False, pad_token_id=0))


@pytest.mark.parametrize('over', [{}, dict(tie_embeddings=False), dict(ffn='gelu'), dict(ffn='relu', d_ff=50), dict(dropout=0.0)])
def test_gpt2_export_same_logits_and_round_trip(tf, idx, over):
    torch.manual_seed(0)
    model = perturb_(Transformer(gpt2(**SIZES, **over))).eval()
    hf = to_hf_gpt2(model)
    assert isinstance(hf, tf.GPT2LMHeadModel)
    torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
    back = from_hf_gpt2(hf)
    assert back.cfg == model.cfg and same_state(back, model)


def test_gpt2_import_and_save_pretrained(tf, idx, tmp_path):
    hf = perturb_(tf.GPT2LMHeadModel(gpt2_config(gpt2(**SIZES))), seed=3).eval()
    model = from_hf_gpt2(hf).eval()
    torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)
    hf.save_pretrained(tmp_path)
    loaded = tf.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert same_state(from_hf_gpt2(loaded), model)


def test_configs_round_trip_and_refusals(tf):
    for cfg in (modern_recipe(**SIZES), modern_recipe(**SIZES, n_kv_head=1, d_ff=50, tie_embeddings=True)):
        assert config_from_llama(llama_config(cfg)) == cfg
    for cfg in (gpt2(**SIZES), gpt2(**SIZES, dropout=0.0, tie_embeddings=False)):
        assert config_from_gpt2(gpt2_config(cfg)) == cfg
    cfg = modern_recipe(**SIZES)
    with pytest.raises(ValueError, match='LlamaConfig.attention_bias=True cannot be imported into tinylm; allowed: False'):
        config_from_llama(llama_config(cfg, attention_bias=True))
    with pytest.raises(ValueError, match="rope_type='linear' cannot be imported"):
        config_from_llama(llama_config(cfg, rope_scaling={'rope_type': 'linear', 'factor': 2.0}))
    with pytest.raises(ValueError, match='GPT2Config.scale_attn_by_inverse_layer_idx=True'):
        config_from_gpt2(gpt2_config(gpt2(**SIZES), scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="ModelConfig.norm='layer' cannot be exported"):
        config_from_llama(llama_config(cfg), norm='layer')
