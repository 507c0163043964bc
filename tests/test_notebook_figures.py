"""Prose that cannot go stale: a figure in the text of notebooks 06 onward (and the index) must appear in that notebook's computed outputs.

A *figure* is a number written with a decimal point, a percent sign or an exponent (`1.962`, `12%`, `3e-3`): the
kind of number a measurement produces. Whole numbers (layers, seeds, notebook numbers, years) are not checked, nor is
anything inside inline code, fenced code, LaTeX math or a link target, nor a blockquote: a figure quoted from a paper
is written as a quote (`> Ivanov et al. (2021): ... 25.5% of the runtime`), so the reader can tell it from ours. A figure matches an output number that
rounds to it at the figure's own precision, sign aside ("0.012 lower" matches a printed -0.0123); a percentage also
matches a fraction (12% matches 0.1234).
"""
import json
import re
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parent.parent / 'nbs'

# the notebooks whose prose is told from computed outputs (06-20 and the index); PENDING holds any still being re-told
CHECKED = ['06_experiments', '07_prenorm', '08_rmsnorm', '09_no_bias', '10_glu', '11_positions', '12_gqa', '13_stability', '14_modern', '14b_speed',
           '15_hyperparameters', '16_scaling_laws', '17_knowledge', '18_cramming', '19_dynamics', '20_distributed', 'index']
PENDING = []

FIGURE = re.compile(r'(?<![\w.])(\d+(?:\.\d+)?%|\d+(?:\.\d+)?e[-+]?\d+|\d+\.\d+)(?![\w.]*\d)')
NUMBER = re.compile(r'\d+(?:\.\d+)?(?:e[-+]?\d+)?')
HIDDEN = [re.compile(p, re.S) for p in (r'```.*?```', r'`[^`]*`', r'\$\$.*?\$\$', r'\$[^$]*\$', r'\]\([^)]*\)', r'<!--.*?-->')] + \
         [re.compile(r'^>[^\n]*', re.M),   # blockquote lines: figures quoted from papers
          re.compile(r'\b(?:Python|torch|PyTorch|CUDA|nbdev|version) \d+(?:\.\d+)+')]   # versions are not figures


def prose(nb: dict) -> str:
    text = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    for pat in HIDDEN: text = pat.sub(' ', text)
    return text


def outputs(nb: dict) -> str:
    parts = []
    for c in nb['cells']:
        for o in c.get('outputs', []):
            if o['output_type'] == 'stream': parts.append(''.join(o['text']))
            for kind in ('text/plain', 'text/markdown', 'text/html'):
                if kind in o.get('data', {}): parts.append(re.sub(r'<[^>]+>', ' ', ''.join(o['data'][kind])))
    return '\n'.join(parts)


def figures(text: str) -> list[str]:
    return [m.group(1) for m in FIGURE.finditer(text)]


def matches(figure: str, numbers: list[str]) -> bool:
    "Whether `figure` is what some printed number shows at the figure's precision."
    pct = figure.endswith('%')
    f = figure.rstrip('%')
    if 'e' in f:
        v = float(f)
        return any(abs(float(x) - v) <= 1e-9 * v for x in numbers)
    k = len(f.split('.')[1]) if '.' in f else 0
    nums = [float(x) for x in numbers]
    cands = nums + ([100 * x for x in nums] if pct else [])
    return any(f'{x:.{k}f}' == f for x in cands)


def check(name: str) -> list[str]:
    nb = json.loads((NBS / f'{name}.ipynb').read_text(encoding='utf-8'))
    text, out = prose(nb), outputs(nb)
    numbers = NUMBER.findall(out)
    missing = []
    for m in FIGURE.finditer(text):
        if not matches(m.group(1), numbers):
            missing.append(f'{m.group(1)!r} in "...{text[max(0, m.start() - 60):m.end() + 20].strip()}..."'.replace('\n', ' '))
    return missing


@pytest.mark.parametrize('name', CHECKED)
def test_every_figure_in_the_prose_was_printed(name):
    missing = check(name)
    assert not missing, f'{name}: figures in the text that no computed output shows:\n  ' + '\n  '.join(missing)


def test_every_results_notebook_is_checked_or_pending():
    told = {p.stem for p in NBS.glob('*.ipynb') if p.stem[:2].isdigit() and p.stem[:2] >= '06' and not p.stem.startswith('14a')}
    assert told | {'index'} == set(CHECKED) | set(PENDING) and not set(CHECKED) & set(PENDING)


def test_the_matcher_itself():
    assert figures('loss 1.962 at 3e-3, 12% and 1.5% faster, notebook 07, 2.5x, v0.1.0, 1.0.2') == ['1.962', '3e-3', '12%', '1.5%', '2.5']
    assert figures(prose({'cells': [{'cell_type': 'markdown', 'source': ['see `1.962` and $1.5$ and [x](http://a/1.5)\n', '> a paper: 25.5%\n', 'ours 1.5 on Python 3.11']}]})) == ['1.5']
    assert matches('1.96', ['1.9623']) and not matches('1.97', ['1.9623']) and matches('0.012', ['0.0123'])
    assert matches('12%', ['0.1234']) and matches('12%', ['12.3']) and matches('3e-3', ['0.003']) and not matches('3e-3', ['0.03'])
