"Tests of tinylm.tokenizer through its public API: round trips, known merges and ids, save/load, error messages."
import json, warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
import tiktoken
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import tinylm.core
from tinylm.tokenizer import BPETokenizer, CharTokenizer, DEFAULT_BPE_VOCAB, corpus_tokenizer, EOT, GPT2_SPLIT_PATTERN, TOKENIZER_TYPES, TiktokenTokenizer, Tokenizer, build_tokenizer, count_chunks, gpt2_tokenizer, learn_bpe, load_tokenizer, tokenizer_from_dict

# Real text that ships with the package: Python source with English docstrings.
CORPUS = Path(tinylm.core.__file__).read_text(encoding='utf-8')
PROSE = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
         "and darkness was upon the face of the deep. Naïve café, 中文, Привет, 🙂!\n") * 20


def reference_bpe(text, vocab_size, pattern=GPT2_SPLIT_PATTERN):
    "Naive byte-level BPE: recount all pairs before every merge; highest count, ties to the greatest pair of byte strings."
    chunks = [list(c.encode('utf-8')) for c in regex.findall(pattern, text)]
    vocab, merges = [bytes([i]) for i in range(256)], []
    while len(vocab) < vocab_size:
        counts = Counter(p for c in chunks for p in zip(c, c[1:]))
        if not counts: break
        a, b = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        new = len(vocab); vocab.append(vocab[a] + vocab[b]); merges.append(((a, b), new))
        out = []
        for c in chunks:
            m, i = [], 0
            while i < len(c):
                if i + 1 < len(c) and c[i] == a and c[i + 1] == b: m.append(new); i += 2
                else: m.append(c[i]); i += 1
            out.append(m)
        chunks = out
    return merges


def replay(tok, text):
    "Encode by applying `tok.merges` in order inside each pre-tokenized chunk."
    out = []
    for chunk in regex.findall(tok.pattern, text):
        ids = list(chunk.encode('utf-8'))
        for (a, b), new in tok.merges:
            m, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b: m.append(new); i += 2
                else: m.append(ids[i]); i += 1
            ids = m
        out += ids
    return out


@pytest.fixture(scope='module')
def bpe(): return BPETokenizer.train(CORPUS + PROSE, 400)

@pytest.fixture(scope='module')
def gpt2(): return gpt2_tokenizer()

@pytest.fixture(scope='module')
def char(): return CharTokenizer.train(PROSE)


# --- known merges, tie rule, fast == naive -------------------------------------------------------

def test_known_merges_aaabdaaabac():
    tok = BPETokenizer.train('aaabdaaabac', 260)        # 256 bytes + 3 merges + <|endoftext|>
    assert tok.merges == [((97, 97), 256), ((256, 97), 257), ((257, 98), 258)]
    assert [tok.vocab[n] for _, n in tok.merges] == [b'aa', b'aaa', b'aaab']   # the tie (aa, a) vs (a, b) goes to b'aa' > b'a'
    assert tok.encode('aaabdaaabac') == [258, ord('d'), 258, ord('a'), ord('c')]
    assert (tok.vocab_size, tok.eot_id) == (260, 259)

def test_tie_goes_to_the_greatest_pair_of_byte_strings():
    # ('a','b'), (' ','c') and ('c','d') all occur once: (b'c', b'd') is the greatest
    assert BPETokenizer.train('ab cd', 258).merges == [((99, 100), 256)]
    # after 'aa' -> 256, (' ', 'aa') and (' ', 'b') tie: by bytes b'b' > b'aa', although id 98 < 256
    assert BPETokenizer.train('aa aa b', 259).merges == [((97, 97), 256), ((32, 98), 257)]
    # (a, a) occurs 3 times in 'aaaa' (overlapping), more than anything else
    assert BPETokenizer.train('aaaa b', 258).merges == [((97, 97), 256)]

def test_pretokenization_blocks_merges_across_chunks():
    tok = BPETokenizer.train('dog. dog! dog? ' * 50, 260)   # all 3 merges there are
    assert not any(b'g.' in t or b'g!' in t or b'g?' in t for t in tok.vocab)
    assert b' dog' in tok.vocab

def test_fast_equals_naive_on_real_text():
    for text in (CORPUS[:15_000], PROSE):
        assert learn_bpe(count_chunks(text), 420) == reference_bpe(text, 420)

@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet='ab c\n', min_size=1, max_size=12), min_size=1, max_size=8))
def test_fast_equals_naive_to_exhaustion(words):
    text = ''.join(words)
    merges = learn_bpe(count_chunks(text), 10_000)          # until nothing is left to merge
    assert merges == reference_bpe(text, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tok = BPETokenizer.train(text, 10_000)            # the constructor checks token bytes are unique
    assert tok.decode(tok.encode(text)) == text

def test_special_tokens_cut_out_of_training_text():
    assert count_chunks(f'ab{EOT}ab') == Counter({'ab': 2})
    tok = BPETokenizer.train(f'xy{EOT}' * 30, 258)
    assert tok.merges == [((120, 121), 256)]               # nothing learned from '<|endoftext|>' itself


# --- round trips ---------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_round_trip(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s
    assert bpe.decode(bpe.encode_ordinary(s)) == s

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_tiktoken_equals_replaying_merges(bpe, s):
    assert bpe.encode_ordinary(s) == replay(bpe, s)

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_gpt2_round_trip(gpt2, s):
    assert gpt2.decode(gpt2.encode(s)) == s

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_char_round_trip(char, data):
    s = data.draw(st.text(alphabet=char.chars))
    assert char.decode(char.encode(s)) == s

@pytest.mark.parametrize('s', ['', '\x00', '\u0301', '👨\u200d👩\u200d👧', '中文', 'مرحبا', '\t \r\n\n  ', EOT * 2, '\U0010ffff'])
def test_tricky_strings(bpe, gpt2, s):
    for tok in (bpe, gpt2): assert tok.decode(tok.encode(s)) == s

def test_decode_accepts_tensors_and_arrays(bpe, char):
    ids = bpe.encode('In the beginning')
    assert bpe.decode(torch.tensor(ids)) == bpe.decode(np.array(ids)) == bpe.decode(tuple(ids)) == 'In the beginning'
    assert char.decode(torch.tensor(char.encode('the face'))) == 'the face'


# --- special tokens, GPT-2 -----------------------------------------------------------------------

def test_special_tokens(bpe):
    ids = bpe.encode(f'Amen.{EOT}In')
    assert ids.count(bpe.eot_id) == 1 and bpe.eot_id == bpe.vocab_size - 1
    assert bpe.eot_id not in bpe.encode_ordinary(f'Amen.{EOT}In')
    assert BPETokenizer.train('abc', 258, special_tokens=()).eot_id is None

def test_gpt2_known_ids(gpt2):
    assert gpt2.encode('Hello world') == [15496, 995]
    assert gpt2.encode(' the') == [262]
    assert gpt2.encode(EOT) == [50256]
    assert (gpt2.vocab_size, len(gpt2), gpt2.eot_id, gpt2.name) == (50257, 50257, 50256, 'gpt2')
    assert gpt2.decode([15496, 995, 50256]) == 'Hello world' + EOT


# --- names, save/load ----------------------------------------------------------------------------

def test_names_identify_the_vocabulary(bpe, char):
    assert bpe.name.startswith('bpe400-') and len(bpe.name) == len('bpe400-') + 8
    assert BPETokenizer.train(CORPUS + PROSE, 400).name == bpe.name
    assert BPETokenizer.train(CORPUS + PROSE, 401).name != bpe.name
    assert BPETokenizer.train(CORPUS, 400).name != bpe.name
    assert BPETokenizer.train(CORPUS + PROSE, 400, special_tokens=('<|pad|>',)).name != bpe.name
    assert char.name.startswith('char-') and CharTokenizer.train(PROSE + 'X').name != char.name

def _round_trip_file(tok, tmp_path):
    path = tok.save(tmp_path/f'{tok.name}.json')
    json.loads(path.read_text())                           # plain JSON
    assert not list(tmp_path.glob('.*.tmp'))               # written atomically, nothing left behind
    return load_tokenizer(path)

def test_save_load(bpe, gpt2, char, tmp_path):
    generic = TiktokenTokenizer(tiktoken.Encoding('tiny', pat_str=GPT2_SPLIT_PATTERN, special_tokens={EOT: 258},
                                                  mergeable_ranks={**{bytes([i]): i for i in range(256)}, b'th': 256, b'the': 257}))
    for tok, text in ((bpe, PROSE), (gpt2, PROSE), (char, PROSE[:500]), (generic, PROSE + EOT)):
        tok2 = _round_trip_file(tok, tmp_path)
        assert type(tok2) is type(tok) and isinstance(tok2, Tokenizer)
        assert (tok2.name, tok2.vocab_size, tok2.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
        assert tok2.encode(text) == tok.encode(text)
        assert tokenizer_from_dict(tok.to_dict()).name == tok.name
    assert _round_trip_file(bpe, tmp_path).merges == bpe.merges
    assert generic.encode('the') == [257] and generic.eot_id == 258

def test_registry():
    assert set(TOKENIZER_TYPES) == {'char', 'bpe', 'tiktoken', 'gpt2'}

def test_build_tokenizer(bpe, tmp_path):
    assert build_tokenizer('char', PROSE).name == CharTokenizer.train(PROSE).name
    assert build_tokenizer('bpe:400', CORPUS + PROSE).name == bpe.name
    assert build_tokenizer('gpt2').encode('Hello world') == [15496, 995]
    assert build_tokenizer(str(bpe.save(tmp_path/'t.json'))).name == bpe.name
    assert build_tokenizer(tmp_path/'t.json').name == bpe.name
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                    # PROSE is too small for 4096 tokens
        assert build_tokenizer('bpe', PROSE).vocab_size <= DEFAULT_BPE_VOCAB == 4096


# --- error messages ------------------------------------------------------------------------------

def test_char_unknown_characters(char):
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the vocabulary: '\$', '€'") as e:
        char.encode('costs $5 or 5€'.replace('5', ''))
    assert f'only knows the {char.vocab_size} characters of its training text' in str(e.value)
    with pytest.raises(ValueError, match='empty text'): CharTokenizer.train('')

def test_bpe_vocab_size_validation():
    with pytest.raises(ValueError, match=r'vocab_size must be an int >= 257 \(256 byte tokens \+ 1 special token\(s\)\), got 256'):
        BPETokenizer.train('abc', 256)
    with pytest.raises(ValueError, match=r'vocab_size must be an int >= 258 .* got 257'):
        BPETokenizer.train('abc', 257, special_tokens=(EOT, '<|pad|>'))
    for bad in (300.0, '300', True, None):
        with pytest.raises(ValueError, match='vocab_size must be an int'): BPETokenizer.train('abc', bad)
    assert BPETokenizer.train('abc', 256, special_tokens=()).vocab_size == 256

def test_bpe_warns_when_text_runs_out():
    with pytest.warns(UserWarning, match='ran out of pairs to merge after 7 merges: the vocabulary has 264 tokens, not the 300'):
        tok = BPETokenizer.train('aaabdaaabac', 300)
    assert tok.vocab_size == 264 and tok.name.startswith('bpe264-')

def test_bad_merges_rejected():
    with pytest.raises(ValueError, match='token bytes must be unique'): BPETokenizer([((97, 97), 256), ((97, 97), 257)])
    with pytest.raises(ValueError, match='must join two existing ids'): BPETokenizer([((97, 300), 256)])

def test_decode_errors(bpe):
    with pytest.raises(ValueError, match=r'token id 400 is outside the vocabulary \[0, 400\)'): bpe.decode([1, 400])
    with pytest.raises(ValueError, match='outside the vocabulary'): bpe.decode([-1])
    with pytest.raises(ValueError, match=r'1-D sequence of token ids, got shape \(1, 2\)'): bpe.decode(torch.tensor([[1, 2]]))

def test_load_errors(bpe, tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.json'): load_tokenizer(tmp_path/'nope.json')
    (tmp_path/'bad.json').write_text('{"type": "bpe", ')
    with pytest.raises(ValueError, match='bad.json is not a tokenizer JSON file'): load_tokenizer(tmp_path/'bad.json')
    (tmp_path/'wp.json').write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer type 'wordpiece'; known types: 'char', 'bpe', 'tiktoken', 'gpt2'"):
        load_tokenizer(tmp_path/'wp.json')
    with pytest.raises(ValueError, match="unknown tokenizer type None"): tokenizer_from_dict([1, 2])
    with pytest.raises(ValueError, match="invalid 'bpe' tokenizer: missing field 'merges'"): tokenizer_from_dict({'type': 'bpe'})
    with pytest.raises(ValueError, match='edited or corrupt'): tokenizer_from_dict({**bpe.to_dict(), 'name': 'bpe400-deadbeef'})
    d = bpe.to_dict(); d['merges'] = d['merges'][:5] + [[1, 1, 999]]
    with pytest.raises(ValueError, match="invalid 'bpe' tokenizer: merge 5"): tokenizer_from_dict(d)

def test_build_errors():
    for spec in ('char', 'bpe', 'bpe:300'):
        with pytest.raises(ValueError, match=f"'{spec}' learns its vocabulary from text: pass text="): build_tokenizer(spec)
    for spec in ('bpe:', 'bpe:lots', 'bpe:-5'):
        with pytest.raises(ValueError, match=r"the vocab size must be a number; use 'char', 'bpe' \(= 'bpe:4096'\), 'bpe:N'"):
            build_tokenizer(spec, 'abc')
    with pytest.raises(ValueError, match=r"unknown tokenizer spec 'wordpiece'; use 'char', 'bpe' .*'gpt2', or the path"):
        build_tokenizer('wordpiece')
    with pytest.raises(ValueError, match='vocab_size must be an int >= 257'): build_tokenizer('bpe:100', 'abc')
    with pytest.raises(FileNotFoundError, match='missing.json'): build_tokenizer('missing.json')


def _bpe_dict():
    "A small BPE tokenizer's dict without its name (which is derived from the contents, so an edit would change it)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return {k: v for k, v in BPETokenizer.train('hello world ' * 50, 266).to_dict().items() if k != 'name'}


def _tt(d):
    "The same vocabulary as a plain tiktoken tokenizer's dict."
    b = tokenizer_from_dict(d)
    return TiktokenTokenizer(b.enc, b.name).to_dict()


@pytest.mark.parametrize('change, message', [
    (lambda d: {'type': 'char', 'chars': 5}, "invalid 'char' tokenizer: field 'chars' must be a str, got int"),
    (lambda d: dict(d, merges='abc'), "field 'merges' must be a list, got str"),
    (lambda d: dict(d, merges=[[1, 2]]), "field 'merges' must be a list of [id_a, id_b, new_id] triples"),
    (lambda d: dict(d, pattern=5), "field 'pattern' must be a str, got int"),
    (lambda d: {k: v for k, v in d.items() if k != 'pattern'}, "invalid 'bpe' tokenizer: missing field 'pattern'"),
    (lambda d: dict(_tt(d), mergeable_ranks=[1, 2]), "field 'mergeable_ranks' must be a dict, got list"),
    (lambda d: dict(_tt(d), special_tokens={'<|x|>': 10 ** 20}), "field 'special_tokens' must map non-empty strings to integer ids"),
    (lambda d: dict(_tt(d), special_tokens={'<|x|>': 0}), "field 'special_tokens' reuses the ranks of ordinary tokens: [0]"),
    (lambda d: dict(_tt(d), name=3), "field 'name' must be a str, got int"),
])
def test_bad_tokenizer_fields_are_named(change, message):
    with pytest.raises(ValueError) as e:
        tokenizer_from_dict(change(_bpe_dict()))
    assert message in str(e.value)


def test_a_damaged_cached_tokenizer_is_rebuilt(tmp_path, capsys):
    corpus = tmp_path / 'c.txt'
    corpus.write_text('abcabc hello ' * 200)
    tok = corpus_tokenizer('char', str(corpus), cache=tmp_path / 'cache')
    (cached,) = (tmp_path / 'cache').glob('*.json')
    cached.write_text('{"type": "char", "chars": 7}')
    again = corpus_tokenizer('char', str(corpus), cache=tmp_path / 'cache')
    assert again.to_dict() == tok.to_dict() and 'is damaged' in capsys.readouterr().out
    assert json.loads(cached.read_text())['chars'] == tok.to_dict()['chars']   # the cache entry is good again


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 3000), max_size=60), buffer=st.sampled_from([1, 3, 50, 1 << 16]))
def test_encode_iterable_equals_encode_whatever_the_pieces(gpt2, cuts, buffer):
    text = (PROSE[:1400] + '  \n\n\t x' + EOT + EOT + ' y  ' + PROSE[:1500])[:3000]
    cuts = sorted(set(c for c in cuts if c < len(text)))
    pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
    assert list(gpt2.encode_iterable(pieces, buffer=buffer)) == gpt2.encode(text)


def test_encode_iterable_of_chars_and_of_a_file(char, tmp_path):
    assert list(char.encode_iterable(PROSE[i:i + 7] for i in range(0, len(PROSE), 7))) == char.encode(PROSE)
    (tmp_path / 'f.txt').write_text(PROSE * 5, encoding='utf-8')
    bpe = BPETokenizer.train(PROSE, 300)
    with open(tmp_path / 'f.txt', encoding='utf-8') as f:
        assert list(bpe.encode_iterable(f, buffer=100)) == bpe.encode(PROSE * 5)
