"Tests of tinylm.data: text sources, downloads (file:// only, never the network), token datasets and their cache."
import json, os
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.data import CORPORA, Corpus, DownloadError, TokenDataset, cache_dir, download, load_text, prepare_dataset, register_corpus, split_text, text_stats, token_dtype


class ByteEncoder:
    name, vocab_size = 'bytes', 256
    def encode(self, text): return list(text.encode('utf-8'))
    def decode(self, ids): return bytes(ids).decode('utf-8')

class BigEncoder(ByteEncoder):
    "ids above uint16's range"
    name, vocab_size = 'big', 70_256
    def encode(self, text): return [b + 70_000 for b in text.encode('utf-8')]

class CountingEncoder(ByteEncoder):
    def __init__(self): self.calls = 0
    def encode(self, text): self.calls += 1; return super().encode(text)

TEXT = ''.join(f'line {i}: the quick brown fox jumps over the lazy dog\n' for i in range(200))


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    "Every test gets its own TINYLM_CACHE, so nothing touches ~/.cache."
    monkeypatch.setenv('TINYLM_CACHE', str(tmp_path/'cache'))
    return tmp_path/'cache'


def all_files(root: Path): return sorted(p.relative_to(root).as_posix() for p in root.rglob('*') if p.is_file())


# ---- corpora and load_text

def test_builtin_corpora_registered():
    assert {'kjv', 'pystdlib', 'shakespeare', 'tinystories', 'tinystories-train'} <= set(CORPORA)
    assert isinstance(CORPORA['kjv'], Corpus)
    assert not CORPORA['kjv'].needs_download and not CORPORA['pystdlib'].needs_download
    assert CORPORA['shakespeare'].needs_download and CORPORA['tinystories'].needs_download

def test_kjv():
    text = load_text('kjv')
    assert text.startswith('In the beginning God created the heaven and the earth.')
    assert 'darkness was upon the face of the deep' in text   # '[was]' with the italics markers dropped
    assert '[' not in text and ']' not in text
    assert 4_000_000 < len(text) < 4_300_000

def test_pystdlib():
    text = load_text('pystdlib')
    headers = [l for l in text.splitlines() if l.startswith('# file: ')]
    names = [h[len('# file: '):] for h in headers]
    assert text.startswith('# file: __future__.py\n')
    assert 'json/decoder.py' in names and 'os.py' in names
    assert not any(n.startswith(('test/', 'idlelib/', 'site-packages/')) or '/tests/' in n for n in names)
    assert names == sorted(names)
    assert len(text) > 5_000_000
    assert load_text('pystdlib') == text   # deterministic

def test_register_corpus(monkeypatch):
    monkeypatch.setitem(CORPORA, '_x', None)  # restored (removed) after the test
    @register_corpus('_x', 'a test corpus')
    def _x(): return 'some text\n'
    assert CORPORA['_x'].description == 'a test corpus'
    assert load_text('_x') == 'some text\n'

def test_unknown_name():
    with pytest.raises(ValueError) as e: load_text('shakespear')
    msg = str(e.value)
    assert "'shakespear'" in msg and 'kjv, pystdlib, shakespeare, tinystories, tinystories-train' in msg
    assert 'file' in msg and 'folder' in msg and 'URL' in msg

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such file or folder'): load_text(tmp_path/'nope.txt')
    with pytest.raises(FileNotFoundError, match="'data/nope.txt'"): load_text('data/nope.txt')

def test_empty_file(tmp_path):
    (tmp_path/'empty.txt').write_text('')
    with pytest.raises(ValueError, match='empty.txt.* is empty'): load_text(tmp_path/'empty.txt')
    (tmp_path/'blank.txt').write_text('\n  \n')
    with pytest.raises(ValueError, match='is empty'): load_text(str(tmp_path/'blank.txt'))

def test_file_utf8_and_line_endings(tmp_path):
    (tmp_path/'a.txt').write_bytes('\ufeffcafé\r\nnaïve\r\n'.encode('utf-8'))
    assert load_text(tmp_path/'a.txt') == 'café\nnaïve\n'
    (tmp_path/'b.txt').write_bytes('café'.encode('latin-1'))
    with pytest.raises(ValueError, match=r'b\.txt is not UTF-8 text \(byte 0xe9 at offset 3\)'): load_text(tmp_path/'b.txt')

def test_folder_order_and_suffixes(tmp_path):
    d = tmp_path/'corpus'; (d/'sub').mkdir(parents=True); (d/'.git').mkdir()
    (d/'b.md').write_text('bee\n'); (d/'a.txt').write_text('ay\n\n\n'); (d/'sub'/'c.py').write_text('x = 1\n')
    (d/'Z.TXT').write_text('zed\n')                      # upper-case suffix counts, sorts first
    (d/'image.png').write_bytes(b'\x89PNG\r\n\x1a\n\xff')  # not a text suffix: ignored (and not UTF-8)
    (d/'.hidden.txt').write_text('secret\n'); (d/'.git'/'HEAD.txt').write_text('secret\n')
    (d/'empty.txt').write_text('')
    assert load_text(d) == 'zed\n\nay\n\nbee\n\nx = 1\n'
    assert load_text(str(d)) == load_text(d)

def test_folder_without_text_files(tmp_path):
    (tmp_path/'d').mkdir(); (tmp_path/'d'/'x.bin').write_bytes(b'\0')
    with pytest.raises(ValueError, match='has no text files'): load_text(tmp_path/'d')

def test_cache_dir(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path/'cache'
    monkeypatch.delenv('TINYLM_CACHE')
    assert cache_dir() == Path.home()/'.cache'/'tinylm'


# ---- downloads (file:// URLs only)

def test_download_and_reuse(tmp_path, tmp_cache):
    src = tmp_path/'book.txt'; src.write_text('Call me Ishmael.\n' * 1000)
    url = src.as_uri()
    p = download(url, progress=False)
    assert p.parent == tmp_cache/'downloads' and p.name.endswith('-book.txt')
    assert p.read_text() == 'Call me Ishmael.\n' * 1000
    src.unlink()                                        # the cached copy is used from now on
    assert download(url) == p
    assert load_text(url) == 'Call me Ishmael.\n' * 1000
    assert all_files(tmp_cache) == [f'downloads/{p.name}']  # no temp files left behind

def test_download_explicit_dest(tmp_path):
    src = tmp_path/'x.txt'; src.write_text('hello\n')
    dest = tmp_path/'out'/'y.txt'
    assert download(src.as_uri(), dest, progress=False) == dest and dest.read_text() == 'hello\n'

def test_download_same_name_different_urls(tmp_path):
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    (tmp_path/'a'/'input.txt').write_text('A\n'); (tmp_path/'b'/'input.txt').write_text('B\n')
    pa, pb = download((tmp_path/'a'/'input.txt').as_uri()), download((tmp_path/'b'/'input.txt').as_uri())
    assert pa != pb and pa.read_text() == 'A\n' and pb.read_text() == 'B\n'

def test_download_failure(tmp_path, tmp_cache):
    url = (tmp_path/'missing.txt').as_uri()
    with pytest.raises(DownloadError) as e: download(url)
    assert url in str(e.value) and 'pass its local path instead' in str(e.value)
    assert isinstance(e.value, OSError)
    assert not (tmp_cache/'downloads').exists() or all_files(tmp_cache/'downloads') == []

def test_unsupported_url_scheme():
    with pytest.raises(ValueError, match="unsupported URL 'ftp://example.com/a.txt': only http://, https:// and file://"):
        load_text('ftp://example.com/a.txt')


# ---- text stats and the split

def test_text_stats():
    assert text_stats('héllo\nworld\n') == dict(chars=12, bytes=13, lines=2)
    assert text_stats('a\nb') == dict(chars=3, bytes=3, lines=2)
    assert text_stats('') == dict(chars=0, bytes=0, lines=0)

def test_split_text():
    train, val = split_text(TEXT, 0.1)
    assert train + val == TEXT
    assert train.endswith('\n') and val.startswith('line ')
    assert abs(len(val) - 0.1 * len(TEXT)) < 60          # within one line of the requested share
    assert split_text('abcdefghij', 0.3) == ('abcdefg', 'hij')
    assert split_text(TEXT, 0) == (TEXT, '')
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r'val_fraction must be in \[0, 1\)'): split_text(TEXT, bad)


# ---- TokenDataset

def test_build_open_round_trip(tmp_path):
    ds = TokenDataset.build(TEXT, ByteEncoder(), tmp_path/'ds', source='test')
    assert all_files(tmp_path/'ds') == ['meta.json', 'train.bin', 'val.bin']
    train, val = split_text(TEXT, 0.1)
    assert ds.n_tokens('train') == len(train) and ds.n_tokens('val') == len(val)
    assert ds.vocab_size == 256
    m = ds.meta
    assert (m['vocab_size'], m['dtype'], m['n_train'], m['n_val'], m['encoder'], m['source'], m['val_fraction']) == \
           (256, 'uint16', len(train), len(val), 'bytes', 'test', 0.1)
    assert m['format_version'] == 1 and m['created'][:2] == '20'
    assert (tmp_path/'ds'/'train.bin').stat().st_size == 2 * len(train)
    assert np.fromfile(tmp_path/'ds'/'val.bin', dtype='<u2').tolist() == list(val.encode())
    ds2 = TokenDataset.open(tmp_path/'ds')
    assert ds2.meta == m
    assert ByteEncoder().decode(ds2.tokens('train').tolist()) == train
    assert ByteEncoder().decode(ds2.tokens('val').tolist()) == val

def test_uint16_vs_uint32(tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    ds = TokenDataset.build(TEXT, BigEncoder(), tmp_path/'big')
    assert ds.meta['dtype'] == 'uint32'
    assert (tmp_path/'big'/'train.bin').stat().st_size == 4 * ds.n_tokens('train')
    assert TokenDataset.open(tmp_path/'big').tokens('train')[:4].tolist() == [70_000 + b for b in b'line']
    x, y = ds.get_batch('train', 2, 8, generator=torch.Generator().manual_seed(0))
    assert x.min() >= 70_000 and x.dtype == torch.int64

def test_encoder_out_of_range(tmp_path):
    class Bad(ByteEncoder): vocab_size = 100
    with pytest.raises(ValueError, match=r"encoder 'bytes' produced token id 108, outside \[0, vocab_size=100\)"):
        TokenDataset.build(TEXT, Bad(), tmp_path/'bad')
    assert not (tmp_path/'bad'/'meta.json').exists()

def test_get_batch(tmp_path):
    ds = TokenDataset.build(TEXT, ByteEncoder(), tmp_path/'ds')
    x, y = ds.get_batch('train', 4, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64 and x.device.type == 'cpu'
    assert torch.equal(x[:, 1:], y[:, :-1])
    data = ds.tokens('train')
    for row_x, row_y in zip(x.tolist(), y.tolist()):   # each row is a real window of the stream
        i = next(i for i in range(len(data) - 16) if data[i:i + 16].tolist() == row_x)
        assert data[i + 1:i + 17].tolist() == row_y
    xv, _ = ds.get_batch('val', 3, 8)
    assert xv.shape == (3, 8)

def test_get_batch_determinism(tmp_path):
    ds = TokenDataset.build(TEXT, ByteEncoder(), tmp_path/'ds')
    g1, g2 = torch.Generator().manual_seed(123), torch.Generator().manual_seed(123)
    for _ in range(5):
        (x1, y1), (x2, y2) = ds.get_batch('train', 8, 32, generator=g1), ds.get_batch('train', 8, 32, generator=g2)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other, _ = ds.get_batch('train', 8, 32, generator=torch.Generator().manual_seed(124))
    assert not torch.equal(other, x1)
    state = g1.get_state(); a, _ = ds.get_batch('train', 8, 32, generator=g1)
    g1.set_state(state);    b, _ = ds.get_batch('train', 8, 32, generator=g1)
    assert torch.equal(a, b)                            # resuming from a saved generator state

def test_get_batch_limit_repeats_the_first_tokens(tmp_path):
    "limit= draws every window from the first `limit` tokens of the split (the data of a many-epoch run)."
    ds = TokenDataset.build(TEXT, ByteEncoder(), tmp_path/'ds')
    head = ds.tokens('train')[:40].tolist()
    x, y = ds.get_batch('train', 64, 8, generator=torch.Generator().manual_seed(0), limit=40)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        i = next(i for i in range(40 - 8) if head[i:i + 8] == row_x)
        assert head[i + 1:i + 9] == row_y
    with pytest.raises(ValueError, match='limit must be a positive integer or None'): ds.get_batch('train', 2, 2, limit=0)
    with pytest.raises(ValueError, match="too few for block_size=8"): ds.get_batch('train', 2, 8, limit=8)

def test_get_batch_errors(tmp_path):
    ds = TokenDataset.build('short\ntext\n', ByteEncoder(), tmp_path/'ds', val_fraction=0.4)
    n = ds.n_tokens('val')
    with pytest.raises(ValueError, match=f"the 'val' split has {n} tokens, too few for block_size=8"): ds.get_batch('val', 2, 8)
    assert ds.get_batch('val', 2, n - 1)[0].shape == (2, n - 1)   # exactly block_size + 1 tokens is enough
    with pytest.raises(ValueError, match="split must be one of 'train', 'val', got 'test'"): ds.get_batch('test', 2, 2)
    with pytest.raises(ValueError, match="split must be one of 'train', 'val'"): ds.n_tokens('validation')
    with pytest.raises(ValueError, match='block_size must be a positive integer'): ds.get_batch('train', 2, 0)
    empty_val = TokenDataset.build('abc\n', ByteEncoder(), tmp_path/'e', val_fraction=0)
    assert empty_val.n_tokens('val') == 0
    with pytest.raises(ValueError, match="the 'val' split has 0 tokens"): empty_val.get_batch('val', 1, 1)

def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='the folder does not exist'): TokenDataset.open(tmp_path/'nothing')
    TokenDataset.build(TEXT, ByteEncoder(), tmp_path/'ds')
    meta = tmp_path/'ds'/'meta.json'
    good = meta.read_text()
    meta.write_text(good[:40])
    with pytest.raises(ValueError, match='meta.json is corrupt: not valid JSON'): TokenDataset.open(tmp_path/'ds')
    meta.write_text(json.dumps({**json.loads(good), 'dtype': 'float32'}))
    with pytest.raises(ValueError, match="meta.json is corrupt: dtype is 'float32'"): TokenDataset.open(tmp_path/'ds')
    meta.write_text(json.dumps({**json.loads(good), 'format_version': 99}))
    with pytest.raises(ValueError, match='format_version is 99'): TokenDataset.open(tmp_path/'ds')
    meta.write_text(json.dumps({**json.loads(good), 'n_train': json.loads(good)['n_train'] + 1}))
    with pytest.raises(ValueError, match=r'train\.bin has [\d,]+ bytes but meta.json says'): TokenDataset.open(tmp_path/'ds')
    meta.unlink()
    with pytest.raises(FileNotFoundError, match='meta.json is missing'): TokenDataset.open(tmp_path/'ds')
    meta.write_text(good); (tmp_path/'ds'/'val.bin').unlink()
    with pytest.raises(FileNotFoundError, match=r'val\.bin is missing'): TokenDataset.open(tmp_path/'ds')

def test_rebuild_replaces(tmp_path):
    TokenDataset.build(TEXT, ByteEncoder(), tmp_path/'ds')
    ds = TokenDataset.build('new text\nhere\n', ByteEncoder(), tmp_path/'ds', val_fraction=0.5)
    assert ByteEncoder().decode(TokenDataset.open(tmp_path/'ds').tokens('train').tolist()) == 'new text\n'
    assert all_files(tmp_path/'ds') == ['meta.json', 'train.bin', 'val.bin']   # no temp files

def test_large_text_is_encoded_in_pieces(tmp_path):
    text = ''.join(f'paragraph {i}' + ' word' * 50 + '\n' for i in range(10_000))  # ~2.6 M chars
    enc = CountingEncoder()
    ds = TokenDataset.build(text, enc, tmp_path/'ds', val_fraction=0.1)
    assert enc.calls > 2                                 # several pieces...
    train, val = split_text(text, 0.1)
    assert ds.tokens('train').tobytes() == np.frombuffer(train.encode(), np.uint8).astype('<u2').tobytes()  # ...same ids
    assert ByteEncoder().decode(ds.tokens('val').tolist()) == val


# ---- prepare_dataset

def test_prepare_dataset_cache_hit(tmp_path, tmp_cache):
    src = tmp_path/'corpus.txt'; src.write_text(TEXT)
    enc = CountingEncoder()
    ds = prepare_dataset(src, enc)
    assert ds.path.parent == tmp_cache/'tokens' and ds.path.name.startswith('corpus-bytes-')
    calls = enc.calls
    ds2 = prepare_dataset(src, enc)
    assert enc.calls == calls and ds2.path == ds.path and ds2.meta['created'] == ds.meta['created']
    assert ds2.meta['source'] == str(src)
    assert ByteEncoder().decode(ds2.tokens('val').tolist()) == split_text(TEXT)[1]
    ds3 = prepare_dataset(src, enc, val_fraction=0.2)   # another split is another build
    assert ds3.path != ds.path and enc.calls > calls

def test_prepare_dataset_rebuilds_changed_file(tmp_path):
    src = tmp_path/'c.txt'; src.write_text('first version\n' * 10)
    ds = prepare_dataset(src, ByteEncoder(), val_fraction=0)
    src.write_text('second version, longer\n' * 10)
    ds2 = prepare_dataset(src, ByteEncoder(), val_fraction=0)
    assert ds2.path != ds.path
    assert ByteEncoder().decode(ds2.tokens('train').tolist()) == 'second version, longer\n' * 10

def test_prepare_dataset_rebuilds_broken_cache(tmp_path):
    src = tmp_path/'c.txt'; src.write_text(TEXT)
    ds = prepare_dataset(src, ByteEncoder(), cache=tmp_path/'tok')
    assert ds.path.parent == tmp_path/'tok'
    (ds.path/'meta.json').write_text('{')
    ds2 = prepare_dataset(src, ByteEncoder(), cache=tmp_path/'tok')
    assert ds2.path == ds.path and ds2.n_tokens('train') == ds.n_tokens('train')

def test_prepare_dataset_corpus_name(tmp_cache):
    enc = CountingEncoder()
    ds = prepare_dataset('kjv', enc)
    assert ds.n_tokens('train') + ds.n_tokens('val') == text_stats(load_text('kjv'))['bytes']
    calls = enc.calls
    assert prepare_dataset('kjv', enc).path == ds.path and enc.calls == calls

def test_prepare_dataset_bad_source():
    with pytest.raises(ValueError, match='not a registered corpus'): prepare_dataset('nope', ByteEncoder())
    with pytest.raises(FileNotFoundError): prepare_dataset('nope.txt', ByteEncoder())


def test_interrupted_download_leaves_nothing(tmp_path, tmp_cache, monkeypatch):
    "A connection that drops mid-stream raises DownloadError and leaves neither a partial file nor a temp file."
    class Dropping:
        headers = {'Content-Length': '3000000'}
        def __init__(self): self.n = 0
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def read(self, size):
            self.n += 1
            if self.n > 1: raise ConnectionResetError('connection reset by peer')
            return b'x' * size
    monkeypatch.setattr('urllib.request.urlopen', lambda *a, **k: Dropping())
    url = 'https://example.invalid/big.txt'
    with pytest.raises(DownloadError, match=r'could not download https://example\.invalid/big\.txt: connection reset'):
        download(url, progress=False)
    assert all_files(tmp_cache) == []

def test_truncated_download(tmp_cache, monkeypatch):
    "A response shorter than its Content-Length is an error, not a silently truncated corpus."
    class Short:
        headers = {'Content-Length': '100'}
        def __init__(self): self.chunks = [b'y' * 60, b'']
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def read(self, size): return self.chunks.pop(0)
    monkeypatch.setattr('urllib.request.urlopen', lambda *a, **k: Short())
    with pytest.raises(DownloadError, match='got 60 of 100 bytes'): download('https://example.invalid/short.txt', progress=False)
    assert all_files(tmp_cache) == []
