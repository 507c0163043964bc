"""Generation (notebook 04a): every bad argument to `generate` fails at once, naming the argument, the value and what is allowed."""
import pytest
import torch

from tinylm.generation import generate
from tinylm.model import ModelConfig, Transformer


@pytest.fixture(scope='module')
def m():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=66, block_size=32, n_layer=1, d_model=32, n_head=4, dropout=0.0)).eval()


PROMPT = torch.randint(0, 66, (3, 5), generator=torch.Generator().manual_seed(0))

@pytest.mark.parametrize('args, kw, message', [
    ((PROMPT, 5), dict(temperature=-1), 'temperature=-1 must be a finite number >= 0 (0 = greedy)'),
    ((PROMPT, 5), dict(temperature=float('nan')), 'temperature=nan must be a finite number'),
    ((PROMPT, 5), dict(temperature='hot'), "temperature='hot'"),
    ((PROMPT, 5), dict(top_k=0), 'top_k=0 must be a positive integer or None'),
    ((PROMPT, 5), dict(top_k=2.5), 'top_k=2.5 must be a positive integer'),
    ((PROMPT, 5), dict(top_p=0), 'top_p=0 must be a number in (0, 1] or None'),
    ((PROMPT, 5), dict(top_p=1.5), 'top_p=1.5 must be a number in (0, 1]'),
    ((PROMPT, 5), dict(stop=66), 'stop=66 must be a token id or a non-empty list of token ids in [0, 66)'),
    ((PROMPT, 5), dict(stop=[]), 'stop=[] must be a token id'),
    ((PROMPT, 5), dict(stop='\n'), "stop='\\n' must be a token id"),
    ((PROMPT, 5), dict(pad_id=-1), 'pad_id=-1 must be None or a token id in [0, 66)'),
    ((PROMPT, -1), {}, 'max_new_tokens=-1 must be an integer >= 0'),
    ((PROMPT[0], 5), {}, 'idx must be a (B, T) tensor of token ids with T >= 1'),
    (([], 5), {}, 'idx must be a (B, T) tensor or a non-empty list of prompts'),
    (([[1, 2], []], 5), {}, 'each prompt must be a non-empty list'),
    (([[1, 2], [3, 99]], 5), {}, 'prompt 1 has token ids outside [0, 66): min 3, max 99'),
    ((PROMPT.float(), 5), {}, 'prompt 0 holds torch.float32 values; token ids must be integers'),
    (([list(range(33))], 1), {}, 'the prompt (33 tokens)'),
])
def test_bad_arguments(m, args, kw, message):
    with pytest.raises(ValueError) as e: generate(m, *args, **kw)
    assert message in str(e.value)


def test_good_arguments_at_the_edges(m):
    assert generate(m, PROMPT, 0).shape == (3, 5)
    assert generate(m, PROMPT, 3, top_p=1.0, top_k=66, stop=[1, 2]).shape[0] == 3
    assert generate(m, [list(range(32))], 0)[0] == list(range(32))   # a full context and nothing new is fine


def test_a_kv_cache_over_given_tensors_fills_them():
    "KVCache.over writes into tensors someone else holds (notebook 14b's decode step prefills its own cache this way)."
    from tinylm.generation import KVCache
    ks, vs = [torch.zeros(2, 1, 5, 4) for _ in range(2)], [torch.zeros(2, 1, 5, 4) for _ in range(2)]
    cache = KVCache.over(ks, vs)
    k_all, _ = cache.update(1, torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))
    assert k_all.shape == (2, 1, 3, 4) and ks[1][:, :, :3].eq(1).all() and ks[1][:, :, 3:].eq(0).all() and cache.max_len == 5
    with pytest.raises(ValueError, match='one key and one value tensor per layer'):
        KVCache.over(ks, vs[:1])
