"""Write README.md from nbs/index.ipynb without Quarto (nbdev_readme needs it).

Markdown cells are copied (links to notebooks, relative to nbs/ in the index, get the nbs/ prefix); code cells are shown as Python blocks followed by their text output;
cells marked `#| hide` or holding an `#| export` are left out and directive lines are dropped.
`--check` exits 1 if README.md is not what index.ipynb generates.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def directives(src):
    return [line[3:].strip().split()[0] for line in src.splitlines() if line.startswith('#| ') and line[3:].strip()]


def render(nb):
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown':
            # the index links notebooks relative to nbs/, where it lives; the README sits one folder up
            parts.append(re.sub(r'\]\((?!https?:|/|nbs/)([^)]+\.ipynb)\)', r'](nbs/\1)', src.strip()))
            continue
        if cell['cell_type'] != 'code' or {'hide', 'export', 'exports', 'default_exp'} & set(directives(src)):
            continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if code:
            parts.append(f'```python\n{code}\n```')
        out = ''.join(''.join(o.get('text', '')) if o['output_type'] == 'stream' else
                      ''.join(o.get('data', {}).get('text/plain', '')) for o in cell.get('outputs', [])
                      if o['output_type'] in ('stream', 'execute_result'))
        if out.strip():
            parts.append(f'```\n{out.rstrip()}\n```')
    return '\n\n'.join(p for p in parts if p) + '\n'


def main():
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text(encoding='utf-8'))
    text = render(nb)
    readme = ROOT / 'README.md'
    if '--check' in sys.argv:
        if readme.read_text(encoding='utf-8') != text:
            print('README.md is out of step with nbs/index.ipynb: run python .ci/make_readme.py')
            return 1
        return 0
    readme.write_text(text, encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
