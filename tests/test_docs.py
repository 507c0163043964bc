"""The documentation site as a reader meets it: built by `nbs/_sphinx/build.py` (the README's docs command), then
opened in headless Chromium. Without the `docs` extra or a Chromium these tests skip; CI's docs check sets
TINYLM_DOCS_CHECK=1, under which a missing tool fails instead, and TINYLM_DOCS_SITE to check the site it built."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
REQUIRED = os.environ.get('TINYLM_DOCS_CHECK') == '1'
CHROMIUM = next((p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None)
COURSE_PAGES = ('06_experiments', '10_glu', '16_scaling_laws')   # three course pages rendered in the browser


def _require(ok: bool, what: str):
    if not ok: (pytest.fail if REQUIRED else pytest.skip)(f'{what} (install the docs extra and Debian\'s chromium to check the site)')


def notebooks() -> list[Path]:
    return [p for p in sorted(NBS.rglob('*.ipynb')) if not any(part.startswith(('_', '.')) for part in p.relative_to(NBS).parts)]


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    if env := os.environ.get('TINYLM_DOCS_SITE'):
        path = Path(env)
        _require((path / 'index.html').is_file(), f'TINYLM_DOCS_SITE={env} holds no built site')
        return path
    _require(all(find_spec(m) for m in ('sphinx', 'myst_nb', 'furo', 'sphinx-mathjax-offline')), 'the docs extra is not installed')
    out = tmp_path_factory.mktemp('site') / 'docs'
    r = subprocess.run([sys.executable, str(NBS / '_sphinx' / 'build.py'), '--out', str(out), '-q'], capture_output=True, text=True)
    assert r.returncode == 0, f'the docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return out


def browser_dom(page: Path) -> str:
    "The DOM of `page` after Chromium has loaded it and run its scripts (MathJax included)."
    _require(CHROMIUM is not None, 'no chromium on PATH')
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--virtual-time-budget=15000',
                        '--dump-dom', page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '<body' in r.stdout, f'chromium could not render {page}: {r.stderr[-1000:]}'
    return r.stdout


class Page(HTMLParser):
    "The parts of an HTML page the checks read: ids, links, images, headings, MathJax output and the visible text."
    def __init__(self, html: str):
        super().__init__()
        self.ids, self.links, self.images, self.h1, self.math, self.text, self.code = set(), [], [], [], 0, [], []
        self._in, self._skip, self._pre = None, 0, None
        self.feed(html)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if 'id' in a: self.ids.add(a['id'])
        if tag == 'a' and 'name' in a: self.ids.add(a['name'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag == 'img': self.images.append(a.get('src', ''))
        if tag == 'h1': self._in = []
        if tag == 'pre': self._pre = []
        if tag == 'mjx-container': self.math += 1
        if tag in ('script', 'style', 'mjx-container'): self._skip += 1
    def handle_endtag(self, tag):
        if tag == 'h1' and self._in is not None: self.h1.append(''.join(self._in).strip()); self._in = None
        if tag == 'pre' and self._pre is not None: self.code.append(''.join(self._pre)); self._pre = None
        if tag in ('script', 'style', 'mjx-container'): self._skip = max(0, self._skip - 1)
    def handle_data(self, data):
        if self._in is not None: self._in.append(data)
        if self._pre is not None: self._pre.append(data)
        if not self._skip: self.text.append(data)


def title_of(nb: Path) -> str:
    "The notebook's title: its first level-1 Markdown heading (what nbdev makes the page title)."
    for c in json.loads(nb.read_text(encoding='utf-8'))['cells']:
        if c['cell_type'] == 'markdown' and (m := re.search(r'^# (.+)$', ''.join(c['source']), re.M)): return m[1].strip()
    raise AssertionError(f'{nb} has no title heading')


def local_target(page: Path, href: str, site: Path) -> tuple[Path, str] | None:
    "The file and fragment a link points to inside the site, or None for an external link."
    u = urlsplit(href)
    if u.scheme in ('http', 'https', 'mailto', 'javascript', 'data') or u.netloc: return None
    target = page if not u.path else (page.parent / unquote(u.path)).resolve()
    if target.is_dir(): target = target / 'index.html'
    return target, unquote(u.fragment)


def test_every_notebook_has_a_page_and_nothing_else_does(site):
    missing = [str(nb.relative_to(NBS)) for nb in notebooks() if not (site / nb.relative_to(NBS).with_suffix('.html')).is_file()]
    assert not missing, f'notebooks without a page: {missing}'
    pages = {p.relative_to(site).as_posix() for p in site.rglob('*.html')}
    expected = {nb.relative_to(NBS).with_suffix('.html').as_posix() for nb in notebooks()}
    extra = sorted(p for p in pages - expected if not p.startswith('api/') and p not in ('genindex.html', 'search.html'))
    assert not extra, f'pages that are not notebooks or API pages: {extra}'
    assert not [p for p in site.rglob('*.json') if '_static' not in p.parts], 'result files must not become part of the site'


@pytest.mark.parametrize('name', ('index',) + COURSE_PAGES)
def test_a_page_renders_in_the_browser(site, name):
    nb = NBS / f'{name}.ipynb'
    page = site / f'{name}.html'
    dom = Page(browser_dom(page))
    assert dom.h1 and dom.h1[0].rstrip('#¶ ') == title_of(nb), f'{name}: heading {dom.h1[:1]} is not the title {title_of(nb)!r}'
    source = nb.read_text(encoding='utf-8')
    md = ''.join(''.join(c['source']) for c in json.loads(source)['cells'] if c['cell_type'] == 'markdown')
    md = re.sub(r'`[^`]*`', '', re.sub(r'```.*?```', '', md, flags=re.S))   # a $ in code is not math
    if re.search(r'\$[^$\n]+\$', md):
        assert dom.math > 0, f'{name}: the notebook has math but the page has no typeset formula (MathJax did not run)'
    text = ' '.join(dom.text)
    for block in dom.code:   # code as shown: no cell directives, no show_doc calls, no export cells
        assert not re.search(r'^\s*#\|', block, re.M), f'{name}: a cell directive is visible: {block[:200]!r}'
        assert not block.lstrip().startswith('show_doc(') and 'nbdev_export()' not in block, f'{name}: a hidden cell is visible: {block[:200]!r}'
    assert '$$' not in text, f'{name}: untypeset $$ math is visible on the page'
    png = [s for s in dom.images if s.endswith('.png')]
    if '"image/png"' in source: assert png, f'{name}: the notebook has plots but the page shows no image'
    for src in dom.images:
        t = local_target(page, src, site)
        assert t is None or t[0].is_file() and t[0].stat().st_size > 0, f'{name}: broken image {src}'
        if t and t[0].suffix == '.png': assert t[0].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', f'{name}: {src} is not a PNG'
    for href in dom.links:   # the links as the browser sees them resolve, fragments included
        t = local_target(page, href, site)
        if t is None: continue
        assert t[0].is_file(), f'{name}: broken link {href}'


def test_every_internal_link_and_anchor_resolves(site):
    parsed = {p.resolve(): Page(p.read_text(encoding='utf-8')) for p in site.rglob('*.html')}
    broken = []
    for page, dom in parsed.items():
        for href in dom.links:
            t = local_target(page, href, site)
            if t is None: continue
            target, frag = t
            if target.suffix == '.html':
                if target not in parsed: broken.append(f'{page.relative_to(site.resolve())}: {href} (no such page)')
                elif frag and frag not in parsed[target].ids: broken.append(f'{page.relative_to(site.resolve())}: {href} (no #{frag} there)')
            elif not target.exists(): broken.append(f'{page.relative_to(site.resolve())}: {href} (no such file)')
    assert not broken, f'{len(broken)} broken links, e.g.:\n' + '\n'.join(broken[:40])


def test_the_api_reference_lists_every_public_symbol(site):
    import importlib
    from tinylm._modidx import d
    index = Page((site / 'api' / 'index.html').read_text(encoding='utf-8'))
    missing = []
    for modname in d['syms']:
        mod = importlib.import_module(modname)
        page = site / 'api' / f'{modname}.html'
        assert page.is_file(), f'no API page for {modname}'
        ids = Page(page.read_text(encoding='utf-8')).ids
        for name in getattr(mod, '__all__', []):
            if name.lower() not in ids: missing.append(f'{modname}.{name} (no entry)')
            if f'{modname}.html#{name.lower()}' not in index.links: missing.append(f'{modname}.{name} (not on the API index)')
    assert not missing, f'{len(missing)} public symbols missing from the API reference: {missing[:30]}'


def test_screenshots_of_the_landing_page_and_a_course_page(site, tmp_path):
    _require(CHROMIUM is not None, 'no chromium on PATH')
    out = Path(os.environ.get('TINYLM_DOCS_ARTIFACTS') or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    for name in ('index', '06_experiments'):
        shot = out / f'{name}.png'
        r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=1280,1600',
                            '--virtual-time-budget=15000', f'--screenshot={shot}', (site / f'{name}.html').resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and shot.is_file(), f'no screenshot of {name}: {r.stderr[-500:]}'
        head = shot.read_bytes()[:24]
        assert head[:8] == b'\x89PNG\r\n\x1a\n' and struct.unpack('>II', head[16:24]) == (1280, 1600), f'{shot} is not a 1280x1600 PNG'
        assert shot.stat().st_size > 50_000, f'{shot} is nearly empty ({shot.stat().st_size} bytes): the page did not render'


def test_the_quarto_sidebar_lists_every_notebook_in_order():
    "nbdev_docs (on a machine with Quarto) uses nbs/sidebar.yml: it must name exactly the notebooks, in course order."
    listed = re.findall(r'^\s*- (\S+\.ipynb)\s*$', (NBS / 'sidebar.yml').read_text(encoding='utf-8'), re.M)
    expected = ['index.ipynb'] + [p.relative_to(NBS).as_posix() for p in notebooks() if p.parent == NBS and p.name != 'index.ipynb'] + \
               [p.relative_to(NBS).as_posix() for p in notebooks() if p.parent != NBS]
    assert listed == expected, f'nbs/sidebar.yml is out of step with the notebooks: add {sorted(set(expected) - set(listed))}, drop {sorted(set(listed) - set(expected))}'
