"""Write README.md from nbs/index.ipynb without Quarto (nbdev_readme needs it).

Markdown cells are copied (links to notebooks, relative to nbs/ in the index, get the nbs/ prefix); code cells are shown as Python blocks followed by their text output,
and a markdown output (IPython's `Markdown`, e.g. the course table computed from result files) is copied as markdown;
`#| echo: false` shows a cell's output without its code; cells marked `#| hide` or holding an `#| export` are left out and directive lines are dropped.
`--check` exits 1 if README.md is not what index.ipynb generates.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def directives(src):
    return [line[3:].strip().split()[0] for line in src.splitlines() if line.startswith('#| ') and line[3:].strip()]


def link_nbs(text):
    # the index links notebooks relative to nbs/, where it lives; the README sits one folder up
    return re.sub(r'\]\((?!https?:|/|nbs/)([^)]+\.ipynb)\)', r'](nbs/\1)', text.strip())


def render(nb):
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown':
            parts.append(link_nbs(src))
            continue
        if cell['cell_type'] != 'code' or {'hide', 'export', 'exports', 'default_exp'} & set(directives(src)):
            continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if code and not re.search(r'^#\|\s*echo:\s*false\s*$', src, re.M):
            parts.append(f'```python\n{code}\n```')
        text = []
        for o in cell.get('outputs', []):
            data = o.get('data', {})
            if o['output_type'] == 'stream':
                text.append(''.join(o.get('text', '')))
            elif 'text/markdown' in data:
                if ''.join(text).strip(): parts.append(f"```\n{''.join(text).rstrip()}\n```")
                text = []
                parts.append(link_nbs(''.join(data['text/markdown'])))
            elif o['output_type'] == 'execute_result':
                text.append(''.join(data.get('text/plain', '')))
        if ''.join(text).strip():
            parts.append(f"```\n{''.join(text).rstrip()}\n```")
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
