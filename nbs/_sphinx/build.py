"""Build tinylm's documentation site offline, into settings.ini's `doc_path` (`_docs/`).

The notebooks are the docs. nbdev's own processors (the ones `nbdev_docs` runs before Quarto) make each page's
content: a `show_doc` entry after every exported symbol, `#| hide` and `#| export` cells removed, backticked names
linked to their entries, the first heading and quote as title and description. This script then adapts that
output to Sphinx + myst-nb (no Quarto is needed): directives become cell tags, Quarto link attributes become
HTML, links point inside the site, and it adds an API reference page per module. Sphinx renders the committed
cell outputs (nothing is re-executed) with the Furo theme, its own search index, and MathJax served from the
site (the `sphinx-mathjax-offline` package), so the site works without a network.

    python nbs/_sphinx/build.py            # writes _docs/, then prints the page count and the time

It installs nothing and writes nothing outside the output folder and a temporary build folder.
"""
from __future__ import annotations

import argparse, configparser, html, importlib, inspect, os, posixpath, re, shutil, subprocess, sys, tempfile, time, warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NBS = ROOT / 'nbs'

def settings() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']

def course_notebooks() -> list[Path]:
    "The landing page, the course in order, then the studies: every notebook nbdev would document (none starting with `_`)."
    top = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')) and p.name != 'index.ipynb')
    studies = sorted(p for p in (NBS / 'studies').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return [NBS / 'index.ipynb'] + top + studies

# ---------------------------------------------------------------------------------------------------------------
# nbdev's processing, then the adaptation to MyST

def nbdev_process(path: Path):
    "The notebook at `path` as nbdev's docs processors leave it (run in the notebook's folder, as nbdev does)."
    from execnb.nbio import read_nb
    from nbdev.processors import FilterDefaults
    nb = read_nb(path)
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            FilterDefaults()(nb)
    finally: os.chdir(cwd)
    return nb

def process_all(paths: list[str], dest: str) -> None:
    "nbdev's processing of every notebook in `paths`, each written as plain JSON (cells and front matter) under `dest`."
    import json
    for p in map(Path, paths):
        nb = nbdev_process(p)
        cells = [dict(cell_type=c.cell_type, id=c.get('id'), source=c.get('source', ''), outputs=c.get('outputs', []),
                      has_sd=bool(getattr(c, 'has_sd', False))) for c in nb.cells]
        out = Path(dest) / p.relative_to(NBS).with_suffix('.json')
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(cells=cells, frontmatter=dict(getattr(nb, 'frontmatter_', {}) or {}))), encoding='utf-8')

def is_show_doc(cell: dict) -> bool:
    "Whether a processed cell is a show_doc entry (one nbdev added, or one the notebook wrote)."
    code = [l for l in cell.get('source', '').splitlines() if l.strip() and not l.lstrip().startswith('#|')]
    return cell.get('has_sd') or bool(code) and code[0].startswith('show_doc(')

def show_doc_anchors(nb: dict) -> set[str]:
    "The anchors of the show_doc entries of a processed notebook."
    out = set()
    for c in nb['cells']:
        for o in c.get('outputs', []):
            md = o.get('data', {}).get('text/markdown') if isinstance(o.get('data'), dict) else None
            if md and is_show_doc(c):
                if m := _HEADING.search(''.join(md) if isinstance(md, list) else md): out.add(anchor(re.sub(r'<[^>]+>', '', m[2])))
    return out

_DIRECTIVE = re.compile(r'^\s*#\|\s*(.*?)\s*$')
_SOURCE_LINK = re.compile(r'\[source\]\((\S+?)\)\{[^}]*\}')
_MD_LINK = re.compile(r'(?<!!)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)')
_HEADING = re.compile(r'^(#{2,6}) (\S.*)$', re.M)

class Linker:
    "Rewrites the links of one page: nbdev's absolute doc links and links to notebooks become links inside the site."
    def __init__(self, page: str, nbdev_pages: dict[str, str], pages: set[str], doc_url: str, repo_blob: str,
                 anchors: dict[str, set[str]] | None = None): # page -> the show_doc anchors it has
        self.page, self.nbdev_pages, self.pages, self.doc_url, self.repo_blob = page, nbdev_pages, pages, doc_url, repo_blob
        self.anchors = anchors or {}
        self.dir = posixpath.dirname(page)
    def rel(self, target_page: str) -> str:
        return posixpath.relpath(target_page, self.dir or '.')
    def target(self, url: str) -> str | None:
        "The site-relative href for `url`, or None to leave it as it is."
        base, frag = (url.split('#', 1) + [''])[:2]
        frag = f'#{frag}' if frag else ''
        if url.startswith(self.doc_url):
            page = self.nbdev_pages.get(base[len(self.doc_url):].lstrip('/'))
            if page is None: return None
            have = self.anchors.get(page)
            if frag and have is not None and frag[1:] not in have:   # a method nbdev indexes but no show_doc shows: its class
                frag = f'#{frag[1:].split(".")[0]}' if frag[1:].split('.')[0] in have else ''
            return self.rel(page) + frag
        if re.match(r'^[a-z][a-z0-9+.-]*:', url) or url.startswith('#'): return None   # external, or this page
        path = posixpath.normpath(posixpath.join(self.dir, base))
        if path.startswith('nbs/'): path = path[4:]                 # README-style links from the index
        if path.endswith('.ipynb') and path[:-6] + '.html' in self.pages: return self.rel(path[:-6] + '.html') + frag
        return f'{self.repo_blob}/nbs/{path}{frag}'                 # a file that is not a page: link to it in the repo
    def markdown(self, text: str) -> str:
        "`text` with its links rewritten; rewritten links become inline HTML, which MyST passes through untouched."
        text = _SOURCE_LINK.sub(lambda m: f'<a class="sourcelink" href="{html.escape(m[1])}">source</a>', text)
        def link(m):
            label, url = m[1], m[2]
            href = self.target(url)
            if href is None: return m[0]
            inner = re.sub(r'`([^`]+)`', lambda c: f'<code>{html.escape(c[1])}</code>', html.escape(label, quote=False))
            return f'<a href="{html.escape(href)}">{inner}</a>'
        return _MD_LINK.sub(link, text)

def anchor(name: str) -> str:
    "The anchor nbdev gives a documented symbol: its name, lower case."
    return name.strip().lower()

def show_doc_markdown(md: str, linker: Linker) -> str:
    "A `show_doc` entry for MyST: an HTML anchor with nbdev's id before its heading, Quarto link attributes as HTML."
    md = re.sub(r'^---\n', '<hr class="docsep">\n', linker.markdown(md))   # a Markdown rule inside an output is not allowed by docutils
    return _HEADING.sub(lambda m: f'<a id="{html.escape(anchor(re.sub(r"<[^>]+>", "", m[2])))}"></a>\n\n{m[1]} {m[2]}', md, count=1)

def to_myst(nb, linker: Linker, title: str, description: str) -> dict:
    "The processed notebook as plain nbformat JSON for myst-nb: title and lead first, directives turned into tags."
    cells = [dict(cell_type='markdown', id='title', metadata={}, source=f'# {title}\n\n' + (f'*{description}*\n' if description else ''))]
    for i, c in enumerate(nb['cells']):
        cid = c.get('id') or f'cell-{i}'
        src = c.get('source', '')
        if c['cell_type'] == 'raw': continue                                # Quarto's YAML front matter
        if c['cell_type'] == 'markdown':
            if src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            cells.append(dict(cell_type='markdown', id=cid, metadata={}, source=linker.markdown(src)))
            continue
        lines = src.splitlines()
        directives = {m[1].split(':')[0].strip(): m[1] for l in lines if (m := _DIRECTIVE.match(l))}
        code = '\n'.join(l for l in lines if not _DIRECTIVE.match(l) and not l.lstrip().startswith('%')).strip('\n')
        outputs = []
        for o in c.get('outputs', []):
            o = dict(o)
            if o.get('output_type') in ('display_data', 'execute_result') and 'text/markdown' in o.get('data', {}):
                md = o['data']['text/markdown']
                md = ''.join(md) if isinstance(md, list) else md
                md = show_doc_markdown(md, linker) if is_show_doc(c) else linker.markdown(md)
                o['data'] = dict(o['data'], **{'text/markdown': md})
            outputs.append(o)
        if not code and not outputs: continue
        tags = []
        if not code or directives.get('echo', '').replace(' ', '') == 'echo:false': tags.append('remove-input')
        cell = dict(cell_type='code', id=cid, execution_count=None, metadata={'tags': tags} if tags else {}, outputs=outputs, source=code)
        cells.append(cell)
    return dict(cells=cells, metadata={'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
                                       'language_info': {'name': 'python'}}, nbformat=4, nbformat_minor=5)

# ---------------------------------------------------------------------------------------------------------------
# the API reference: a page per module, every public symbol

def modules() -> dict[str, dict]:
    "tinylm's modules with their nbdev doc pages, from `_modidx` (the index nbdev writes)."
    from tinylm._modidx import d
    return {m: syms for m, syms in sorted(d['syms'].items())}

def _documentable(obj) -> bool:
    return inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj)

def _symbol_doc(mod, name: str, linker: Linker) -> str:
    "The show_doc entry of a function or class."
    from nbdev.showdoc import show_doc
    return show_doc_markdown(show_doc(getattr(mod, name), name=name)._repr_markdown_(), linker)

def _value_summary(obj) -> str:
    "A constant in a line: a mapping by its keys, anything else by its repr (memory addresses dropped), shortened."
    if isinstance(obj, dict): r = f'{len(obj)} entries: ' + ', '.join(map(repr, obj))
    else: r = re.sub(r' at 0x[0-9a-f]+', '', repr(obj))
    r = (r if len(r) <= 160 else r[:160] + ' ...').replace('`', "'").replace('|', '\\|')
    return f'`{r}`'   # a code span: its text is not read as Markdown

def api_pages(src: Path, linker_for, nb_of_module: dict[str, str]) -> list[str]:
    "Write api/index.md and api/<module>.md under `src`; return the module page names in order."
    (src / 'api').mkdir(parents=True, exist_ok=True)
    names, rows = [], []
    for modname in modules():
        mod = importlib.import_module(modname)
        page = f'api/{modname}'
        linker = linker_for(page + '.html')
        public = list(getattr(mod, '__all__', []))
        nb = nb_of_module.get(modname)
        doc = (inspect.getdoc(mod) or '').split('\n')[0]
        lines = [f'# {modname}', '', linker.markdown(doc), '']
        if nb: lines += [f'Explained in <a href="{linker.rel(nb)}">{nb[:-5]}</a>.', '']
        defs = [n for n in public if _documentable(getattr(mod, n))]
        consts = [n for n in public if n not in defs]
        if defs: lines += ['## Functions and classes', ''] + [_symbol_doc(mod, n, linker) + '\n' for n in defs]
        if consts:
            lines += ['## Constants', '', '| name | type | value |', '|---|---|---|']
            lines += [f'| <a id="{anchor(n)}"></a><code>{n}</code> | {type(getattr(mod, n)).__name__} | {_value_summary(getattr(mod, n))} |'
                      for n in consts]
            lines.append('')
        (src / f'{page}.md').write_text('\n'.join(lines), encoding='utf-8')
        names.append(page)
        syms = ', '.join(f'<a href="{posixpath.basename(page)}.html#{anchor(n)}"><code>{n}</code></a>' for n in public)
        rows.append(f'## {modname}\n\n{linker_for("api/index.html").markdown(doc)}\n\n{syms or "(no public symbols)"}\n')
    toc = '\n'.join(posixpath.basename(n) for n in names)
    (src / 'api' / 'index.md').write_text('# API reference\n\nEvery module of the package and every public symbol, as '
                                          '`from tinylm.<module> import <name>` finds it.\n\n' + '\n'.join(rows) +
                                          f'\n```{{toctree}}\n:hidden:\n:maxdepth: 1\n{toc}\n```\n', encoding='utf-8')
    return names

# ---------------------------------------------------------------------------------------------------------------

def _nbdev_name(stem: str) -> str:
    "The page name nbdev (Quarto) gives a notebook: its name without the number prefix ('06_experiments' -> 'experiments')."
    return re.sub(r'^\d+[a-z]?_', '', stem)

def build(out: Path, jobs: str = 'auto', keep: Path | None = None, quiet: bool = False) -> dict:
    "Process every notebook, write the Sphinx sources, run Sphinx into `out`; return page count and timings."
    import json
    t0 = time.perf_counter()
    cfg = settings()
    doc_url = cfg['doc_host'].rstrip('/') + cfg['doc_baseurl'].rstrip('/') + '/'
    repo_blob = cfg['git_url'].rstrip('/') + '/blob/' + cfg.get('branch', 'main')
    nbs = course_notebooks()
    pages = {str(p.relative_to(NBS).with_suffix('.html')) for p in nbs}
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix='tinylm-docs-'))
    src = work / 'src'
    if src.exists(): shutil.rmtree(src)
    src.mkdir(parents=True)
    nbdev_pages, nb_of_module = {}, {}
    for p in nbs:
        rel = str(p.relative_to(NBS))
        m = re.search(r'#\|\s*default_exp\s+([\w.]+)', p.read_text(encoding='utf-8'))
        if m: nb_of_module[f"{cfg['lib_name']}.{m[1]}"] = rel[:-6] + '.html'
        nbdev_pages[posixpath.join(posixpath.dirname(rel), _nbdev_name(p.stem) + '.html')] = rel[:-6] + '.html'
    # nbdev's processors re-run each notebook's exported cells, which re-registers its classes in tinylm's registries:
    # they run in a fresh process, so the API pages below are rendered from the package as users import it
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as ex:
        ex.submit(process_all, [str(p) for p in nbs], str(work / 'nbdev')).result()
    processed = {str(p.relative_to(NBS)): json.loads((work / 'nbdev' / p.relative_to(NBS).with_suffix('.json')).read_text(encoding='utf-8'))
                 for p in nbs}
    anchors = {rel[:-6] + '.html': show_doc_anchors(nb) for rel, nb in processed.items()}
    for modname, page in nb_of_module.items():   # a module's symbols have entries in its API page too
        anchors.setdefault(f'api/{modname}.html', set())
    def linker_for(page: str) -> Linker: return Linker(page, nbdev_pages, pages, doc_url, repo_blob, anchors)
    api = api_pages(src, linker_for, nb_of_module)
    t_proc = time.perf_counter() - t0
    for rel, nb in processed.items():
        fm, page = nb['frontmatter'], rel[:-6] + '.html'
        title = fm.get('title') or Path(rel).stem
        doc = to_myst(nb, linker_for(page), title, fm.get('description', ''))
        if rel == 'index.ipynb':
            course = [r[:-6] for r in processed if r != 'index.ipynb' and '/' not in r]
            studies = [r[:-6] for r in processed if r.startswith('studies/')]
            toc = ''.join(f'\n```{{toctree}}\n:hidden:\n:caption: {cap}\n:maxdepth: 1\n' + '\n'.join(items) + '\n```\n'
                          for cap, items in (('The course', course), ('Studies: the measurement code', studies), ('Reference', ['api/index'])))
            doc['cells'].append(dict(cell_type='markdown', id='toctree', metadata={}, source=toc))
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(doc, indent=1), encoding='utf-8')
    t_src = time.perf_counter() - t0
    out, html_dir = Path(out).resolve(), work / 'html'   # Sphinx (and myst-nb, beside it) write inside the work folder
    if html_dir.exists(): shutil.rmtree(html_dir)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-j', jobs, '-c', str(HERE), '-d', str(work / 'doctrees'),
           '--fail-on-warning', '--keep-going', *(['-q'] if quiet else []), str(src), str(html_dir)]
    env = dict(os.environ, TINYLM_DOCS_ROOT=str(ROOT))
    r = subprocess.run(cmd, env=env)
    if r.returncode:
        if not keep: shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f'sphinx-build failed (exit {r.returncode}): see its messages above; {out} was left as it was')
    (html_dir / '.nojekyll').write_text('')   # GitHub Pages: serve _static/ and _images/ as they are
    shutil.rmtree(html_dir / '.doctrees', ignore_errors=True)
    if out.exists(): shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(html_dir, out)
    if not keep: shutil.rmtree(work, ignore_errors=True)
    return dict(pages=len(nbs), api_pages=len(api) + 1, seconds=round(time.perf_counter() - t0, 1),
                nbdev_seconds=round(t_proc, 1), sources_seconds=round(t_src - t_proc, 1))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, default=None, help="the site folder (default: settings.ini's doc_path, _docs/)")
    p.add_argument('--jobs', default='auto', help="Sphinx's parallel jobs ('auto' or a number)")
    p.add_argument('--keep', type=Path, default=None, help='keep the generated Sphinx sources and doctrees in this folder')
    p.add_argument('-q', '--quiet', action='store_true', help="only Sphinx's warnings and errors")
    a = p.parse_args(argv)
    if not (a.jobs == 'auto' or a.jobs.isdigit() and int(a.jobs) > 0):
        p.error(f"--jobs must be 'auto' or a positive number, got {a.jobs!r}")
    out = a.out or ROOT / settings().get('doc_path', '_docs')
    res = build(out, a.jobs, a.keep, a.quiet)
    print(f"built {out}: {res['pages']} notebook pages and {res['api_pages']} API pages in {res['seconds']} s "
          f"(nbdev processing {res['nbdev_seconds']} s); open {out / 'index.html'}")

if __name__ == '__main__': main()
