"""The lazy package and the `tinylm` entry point: no torch for `import tinylm` or a cached answer, registries that fill themselves."""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from tinylm import console
from tinylm.registry import Registry


def py(code: str, *argv: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    "Run `python -c code ARGV` in a new process; the result and its wall time."
    t = time.perf_counter()
    # run outside the checkout: `python -c` puts its working directory first on sys.path, and in a checkout that would import
    # the source tree's tinylm instead of the installed one this process imports (another fingerprint: every answer a miss)
    p = subprocess.run([sys.executable, '-c', code, *argv], capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'COLUMNS': '100', **(env or {})}, cwd=tempfile.gettempdir())
    return p, time.perf_counter() - t


# runs `tinylm ARGV` as the console script does, then says whether torch was imported
PROBE = "import sys; from tinylm.console import main; rc = main(sys.argv[1:]); print('TORCH', 'torch' in sys.modules); sys.exit(rc)"


def split(p):
    out, _, flag = p.stdout.rpartition('TORCH ')
    return out, flag.strip()


@pytest.fixture
def loader():
    "A stand-in package loader that records its calls; the real one is put back afterwards."
    calls, old = [], Registry.loader
    def load(): calls.append(1); REG['late'] = 'registered by a later module'
    REG = Registry('thing')
    Registry.loader = load
    yield REG, calls
    Registry.loader = old


def test_a_registry_does_not_load_on_register_or_hit(loader):
    reg, calls = loader
    reg.register('a')(str); reg['b'] = int
    assert ('a' in reg, reg['b'], reg.get('a'), reg.check('a')) == (True, int, str, 'a') and calls == []


@pytest.mark.parametrize('miss', [lambda r: r['late'], lambda r: 'late' in r, lambda r: r.get('late'),
                                  lambda r: r.check('late')])
def test_a_registry_loads_once_on_a_miss(loader, miss):
    reg, calls = loader
    reg['a'] = str
    assert miss(reg) and calls == [1]
    with pytest.raises(ValueError, match="thing='nope' is not a known thing; allowed: 'a', 'late'"): reg['nope']
    assert calls == [1]   # the loader was taken: never again


@pytest.mark.parametrize('listing', [list, len, lambda r: list(r.keys()), lambda r: list(r.values()), lambda r: list(r.items())])
def test_a_registry_loads_on_a_full_listing(loader, listing):
    reg, calls = loader
    reg['a'] = str
    assert listing(reg) and calls == [1] and 'late' in dict.keys(reg)


def test_import_tinylm_imports_no_torch():
    p, dt = py("import tinylm, sys; print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('tinylm')))")
    print(f'import tinylm: {dt:.2f} s')
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ['False', "['tinylm',", "'tinylm.registry']"], p.stdout


def test_the_lazy_package_is_the_whole_package():
    p, _ = py("import tinylm; from tinylm import Transformer; from tinylm.model import MODEL_PRESETS; "
              "from tinylm.registry import COMMANDS; "
              "print(Transformer is tinylm.model.Transformer, all(hasattr(tinylm, n) for n in tinylm.__all__), "
              "'modern' in list(MODEL_PRESETS), sorted(COMMANDS), 'positions' in dir(tinylm))")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ['True', 'True', 'True', "['bench',", "'corpora',", "'experiment',", "'presets',", "'sample',", "'train']", 'True']


def test_a_module_imported_alone_sees_every_registered_name():
    "`from tinylm.model import MODEL_PRESETS` loads only model's imports, yet the presets of later notebooks are there."
    p, _ = py("import sys; from tinylm.model import MODEL_PRESETS; late = 'tinylm.modern' in sys.modules; "
              "print(late, 'modern' in MODEL_PRESETS, 'tinylm.modern' in sys.modules)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ['False', 'True', 'True']


@pytest.mark.parametrize('argv', [['presets'], ['corpora'], ['--help'], ['train', '--help']])
def test_a_second_run_is_answered_from_the_cache_without_torch(tmp_path, monkeypatch, capsys, argv):
    "The first run (here in this process, as a new process runs it: the same code) misses and fills the cache; a new process replays it."
    monkeypatch.setenv('TINYLM_CACHE_DIR', str(tmp_path)); monkeypatch.setenv('COLUMNS', '100')   # the width `py` gives
    cold = run_main(capsys, argv)
    [f] = tmp_path.glob('cli-*.json')
    assert cold[0] == 0 and cold[1].strip() and list(json.loads(f.read_text()).values()) == [cold[1]]
    warm, t_warm = py(PROBE, *argv, env={'TINYLM_CACHE_DIR': str(tmp_path)})
    print(f"tinylm {' '.join(argv)}: warm {t_warm:.2f} s")
    assert warm.returncode == 0, warm.stderr
    assert split(warm) == (cold[1], 'False')


def test_the_cache_is_keyed_by_the_terminal_width(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TINYLM_CACHE_DIR', str(tmp_path))
    monkeypatch.setenv('COLUMNS', '200'); wide = run_main(capsys, ['--help'])[1]
    monkeypatch.setenv('COLUMNS', '40'); narrow = run_main(capsys, ['--help'])[1]
    [f] = tmp_path.glob('cli-*.json')
    assert sorted(json.loads(f.read_text()).values()) == sorted([wide, narrow])   # the narrow run missed: two answers
    assert wide != narrow and max(map(len, narrow.splitlines())) <= 40


def test_the_real_command_line_answers_what_the_cache_replays(tmp_path):
    "Fresh processes, as users run them: the cold start, the replay without torch, and `tinylm.cli` itself."
    env = {'TINYLM_CACHE_DIR': str(tmp_path)}
    py(PROBE, 'presets', env=env)
    cached, _ = py(PROBE, 'presets', env=env)
    real, _ = py("import sys; from tinylm.cli import main; sys.exit(main(['presets']))", env=env)
    assert split(cached) == (real.stdout, 'False')


def real_presets() -> str:
    import contextlib, io
    from tinylm.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out: assert main(['presets']) == 0
    return out.getvalue()


def run_main(capsys, argv):
    rc = console.main(argv)
    return rc, capsys.readouterr().out


def test_a_corrupt_cache_is_a_miss_and_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TINYLM_CACHE_DIR', str(tmp_path))
    path, want = tmp_path / f'cli-{console.fingerprint()}.json', real_presets()
    for junk in (b'{"truncated', b'[1, 2]', b'{"key": 3}', b'\xff\xfe'):
        path.write_bytes(junk)
        assert run_main(capsys, ['presets']) == (0, want)
        assert list(json.loads(path.read_text()).values()) == [want]
    path.write_text(json.dumps({console.cache_key(['presets']): 'a planted answer\n'}))
    assert run_main(capsys, ['presets']) == (0, 'a planted answer\n')   # a hit is replayed as stored


def test_a_changed_fingerprint_misses(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TINYLM_CACHE_DIR', str(tmp_path))
    (tmp_path / f'cli-{console.fingerprint()}.json').write_text(json.dumps({console.cache_key(['presets']): 'stale\n'}))
    monkeypatch.setattr(console, 'fingerprint', lambda: 'after-a-re-export')
    assert run_main(capsys, ['presets']) == (0, real_presets())
    assert (tmp_path / 'cli-after-a-re-export.json').exists() and len(list(tmp_path.glob('cli-*.json'))) == 2


def test_the_fingerprint_follows_the_package_files(tmp_path, monkeypatch):
    before = console.fingerprint()
    assert before == console.fingerprint() and len(before) == 16
    monkeypatch.setattr(sys.modules['tinylm'], '__version__', '9.9.9')
    assert console.fingerprint() != before


def test_an_unwritable_cache_folder_means_no_caching(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    monkeypatch.setenv('TINYLM_CACHE_DIR', str(blocker / 'cache'))
    assert run_main(capsys, ['presets']) == (0, real_presets())
    assert blocker.read_text() == 'not a folder'


def test_help_returns_zero_and_errors_still_exit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TINYLM_CACHE_DIR', str(tmp_path))
    rc, out = run_main(capsys, ['train', '--help'])
    assert rc == 0 and out.startswith('usage: tinylm train') and 'run presets (--preset)' in out
    assert run_main(capsys, ['train', '--help']) == (0, out)   # now from the cache
    with pytest.raises(SystemExit) as e: console.main(['train', '--max-steps', '-3', '--help'])
    assert e.value.code == 2 and len(list(tmp_path.glob('cli-*.json'))) == 1
    assert json.loads(next(tmp_path.glob('cli-*.json')).read_text()).keys() == {console.cache_key(['train', '--help'])}
