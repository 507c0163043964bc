"Notebook 17 as a user meets it: the biography data, the bit-complexity bound on cases whose answer is known, quantization, the attention-only FFN, and the resumable studies."
import math

import numpy as np
import pytest
import torch

import tinylm
from tinylm.knowledge import (ATTRIBUTES, N_NAMES, Biographies, People, exposure_batches, knowledge_bits, knowledge_losses,
                              pool_size, quantize_, steps_for)
from tinylm.model import ModelConfig, Transformer
from tinylm.studies import knowledge as sk

SIZES = {a.name: pool_size(a) for a in ATTRIBUTES if not a.derived_from}


def test_bits_of_a_model_that_knows_everyone_nothing_or_half():
    N = 500
    full = knowledge_bits(torch.full((N,), math.log(N)), {a: torch.zeros(N) for a in SIZES})
    assert full['bits'] == pytest.approx(N * (math.log2((N_NAMES - N) / N) + sum(math.log2(s) for s in SIZES.values())), rel=1e-6)
    assert full['bits'] == pytest.approx(full['ideal'], rel=1e-6)
    none = knowledge_bits(torch.full((N,), math.log(N_NAMES)), {a: torch.full((N,), math.log(s)) for a, s in SIZES.items()})
    assert none['bits'] == pytest.approx(0.0, abs=0.05)
    half = knowledge_bits(torch.full((N,), math.log(N_NAMES - N)),
                          {a: torch.cat([torch.zeros(N // 2), torch.full((N // 2,), math.log(s))]) for a, s in SIZES.items()})
    assert half['parts']['name'] == pytest.approx(0.0, abs=0.05)
    assert half['bits'] == pytest.approx((full['bits'] - full['parts']['name']) / 2, rel=1e-5)
    assert 'company_city' not in full['parts']   # decided by the employer: no bits of its own


def test_people_are_seeded_distinct_and_avoidable():
    p = People.sample(300, seed=3)
    assert len(set(p.names.tolist())) == 300 and np.array_equal(People.sample(300, seed=3).names, p.names)
    q = People.sample(300, seed=4, avoid=p.names)
    assert not set(q.names.tolist()) & set(p.names.tolist())
    with pytest.raises(ValueError, match=r'n=0 must be in \[1, 120000\]'): People.sample(0)


def test_every_biography_is_seen_exactly_the_number_of_exposures():
    bios = Biographies(People.sample(7, seed=0))
    rows = [r for x, _ in exposure_batches(bios, 4, 3, torch.Generator().manual_seed(1)) for r in x]
    assert len(rows) == 28 and steps_for(7, 4, 3) == 12
    names = [tuple(r[1:4].tolist()) for r in rows]
    assert sorted(names.count(n) for n in set(names)) == [4] * 7
    with pytest.raises(ValueError, match=r'junk=1.5 must be in \[0, 1\)'):
        next(exposure_batches(bios, 1, 3, None, junk=1.5))


def test_losses_of_a_fresh_model_are_near_uniform_and_prove_nothing():
    bios = Biographies(People.sample(50, seed=0))
    torch.manual_seed(0)
    m = Transformer(ModelConfig.preset('modern', vocab_size=bios.vocab_size, block_size=bios.block_size, d_model=16, n_layer=1,
                                       n_head=2, tie_embeddings=True)).eval()
    losses = knowledge_losses(m, bios)
    assert losses['name'].shape == (50,) and set(losses['attributes']) == {a.name for a in ATTRIBUTES}
    kb = knowledge_bits(losses['name'], losses['attributes'])
    assert kb['bits'] < 0.01 * kb['ideal']   # an untrained model knows (almost) nothing
    assert all(0 <= float(v.mean()) < 0.1 for v in losses['accuracy'].values())


def test_quantize_rounds_to_the_grid_and_checks_its_bits():
    torch.manual_seed(0)
    m = Transformer(ModelConfig.preset('modern', vocab_size=50, block_size=8, d_model=16, n_layer=1, n_head=2))
    quantize_(m, 4)
    assert all(len(torch.unique(row)) <= 15 for row in m.blocks[0].ffn.up_proj.weight)
    with pytest.raises(ValueError, match='bits=1 must be an integer in'): quantize_(m, 1)


def test_the_attention_only_ffn_is_a_registered_choice():
    cfg = ModelConfig.preset('modern', vocab_size=50, block_size=8, d_model=16, n_layer=1, n_head=2, ffn='none')
    assert not any('.ffn.' in n for n, _ in Transformer(cfg).named_parameters())
    assert any('.ffn.' in n for n, _ in Transformer(cfg.replace(ffn='swiglu')).named_parameters())
    with pytest.raises(ValueError, match="'none'"): ModelConfig(ffn='nothing')


def test_a_study_resumes_without_redoing_finished_runs(monkeypatch):
    first = sk.run_groups('capacity', 'tiny', verbose=False)
    key = next(iter(first['runs']))
    partial = dict(first, runs={key: first['runs'][key]})
    calls = []
    real = sk.run_one
    monkeypatch.setattr(sk, 'run_one', lambda run, train, device: calls.append(run.key) or real(run, train, device))
    again = sk.run_groups('capacity', 'tiny', previous=partial, verbose=False)
    assert key not in calls and len(calls) == len(first['runs']) - 1 and set(again['runs']) == set(first['runs'])


def test_dry_run_lists_the_plan(capsys):
    assert tinylm.cli.main(['experiment', '17_knowledge', '--scale', 'cpu', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '17_capacity at cpu scale: a study of its own' in out and 'd48 L2 swiglu N=2000 E=100: LR grid 0.003, 0.01, 0.03' in out
    assert 'd32 L2 swiglu N=2000 E=100 junk=0.5: the best LR of d32 L2 swiglu N=2000 E=100; seeds 1, 2, 3' in out


def test_a_diverged_run_is_recorded_and_left_out():
    ok = sk.run_groups('capacity', 'tiny', verbose=False)
    runs = dict(ok['runs'])
    k = next(iter(runs))
    runs[k] = dict(runs[k], status='diverged', knowledge=None, final=dict(bits=0.0, bits_per_param=0.0))
    pts = sk.capacity_points(dict(ok, runs=runs))
    assert len(pts) == 2 and all(p['lr'] != runs[k]['run']['lr'] or p['group'] != runs[k]['variant'] for p in pts)
