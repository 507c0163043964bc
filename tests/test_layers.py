"The package's imports point one way: every module imports only modules of lower layers, and nothing imports in a cycle."
import ast, pathlib
import tinylm

PKG = pathlib.Path(tinylm.__file__).parent
# lowest first; a module may import only modules that come earlier in this list
LAYERS = ['registry', 'core', 'data', 'tokenizer', 'attention', 'model', 'generation', 'training',
          'prenorm', 'rmsnorm', 'no_bias', 'glu', 'positions', 'gqa', 'stability', 'modern', 'hf', 'hyperparameters',
          'experiments', 'speed', 'scaling', 'knowledge', 'cramming', 'dynamics', 'studies.baseline', 'studies.prenorm', 'studies.rmsnorm', 'studies.no_bias', 'studies.glu',
          'studies.positions', 'studies.gqa', 'studies.stability', 'studies.modern', 'studies.hyperparameters', 'studies.scaling', 'studies.knowledge', 'studies.cramming', 'studies.dynamics', 'distributed', 'cli', 'console', '__init__']

def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG).with_suffix('')
    return '.'.join(rel.parts) if rel.parts[-1] != '__init__' or len(rel.parts) == 1 else '.'.join(rel.parts[:-1])

def _target(node: ast.AST, pkg: list[str]) -> str | None:
    "The tinylm module an import statement names ('' for the package itself), or None if it is not tinylm's."
    if isinstance(node, ast.ImportFrom):
        if node.level: return '.'.join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
        if node.module == 'tinylm' or (node.module or '').startswith('tinylm.'): return node.module[len('tinylm.'):]
    return None

def imports(path: pathlib.Path) -> set[str]:
    "The tinylm modules `path` imports, anywhere in the file."
    me = module_name(path)
    pkg = me.split('.')[:-1] if path.name != '__init__.py' else ([] if me == '__init__' else me.split('.'))
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name[len('tinylm.'):] for a in node.names if a.name.startswith('tinylm.')}
            out |= {'__init__' for a in node.names if a.name == 'tinylm'}
        elif (target := _target(node, pkg)) is not None:
            subs = {f'{target}.{a.name}'.lstrip('.') for a in node.names} & set(LAYERS)   # `from . import model`
            out |= subs or ({target} if target else {'__init__'})
    return out - {me}

def local_imports(path: pathlib.Path) -> list[str]:
    "tinylm imports inside a function or class body: the usual way to dodge an import cycle."
    pkg = module_name(path).split('.')[:-1]
    tree = ast.parse(path.read_text())
    return [f'{path.name}:{n.lineno}' for top in tree.body if not isinstance(top, (ast.Import, ast.ImportFrom))
            for n in ast.walk(top) if (isinstance(n, ast.Import) and any(a.name.split('.')[0] == 'tinylm' for a in n.names))
            or _target(n, pkg) is not None]

def test_every_module_is_placed():
    found = {module_name(p) for p in PKG.rglob('*.py') if p.name != '_modidx.py'} - {'studies'}
    assert found == set(LAYERS), f'modules not in LAYERS: {sorted(found - set(LAYERS))}; gone: {sorted(set(LAYERS) - found)}'

def test_imports_point_down():
    rank = {m: i for i, m in enumerate(LAYERS)}
    bad = []
    for p in PKG.rglob('*.py'):
        me = module_name(p)
        if me in ('studies', ) or p.name == '_modidx.py': continue
        for dep in imports(p):
            if dep == 'studies': continue   # the empty package that holds the study modules
            assert dep in rank, f'{me} imports {dep!r}, which is not a tinylm module in LAYERS'
            if rank[dep] >= rank[me]: bad.append(f'{me} -> {dep}')
    assert not bad, 'upward or sideways imports: ' + ', '.join(sorted(bad))

# the only modules that import tinylm inside a function, on purpose; `imports()` still checks their direction
LOCAL_IMPORTS_ALLOWED = {
    '__init__': 'the lazy package: `_load` imports every module on first use, so `import tinylm` costs no torch',
    'console': 'the entry point: it imports tinylm.cli (torch and all) only when its cache cannot answer',
}

def test_no_function_local_imports():
    found = [x for p in PKG.rglob('*.py') if p.name != '_modidx.py' and module_name(p) not in LOCAL_IMPORTS_ALLOWED
             for x in local_imports(p)]
    assert not found, f'tinylm imported inside a function or class: {found}'
    for me in LOCAL_IMPORTS_ALLOWED:   # an exception that is no longer needed goes
        assert local_imports(PKG / f'{me}.py'), f'{me} no longer imports tinylm in a function: drop it from LOCAL_IMPORTS_ALLOWED'

def test_the_checker_sees_an_upward_import(tmp_path):
    "The walker itself: an upward edge in a file is found."
    f = PKG / 'registry.py'
    assert 'registry' == module_name(f) and imports(f) == set()
    assert imports(PKG / 'core.py') == {'registry'}
    assert {'core', 'attention'} <= imports(PKG / 'model.py')
    assert 'studies.gqa' in imports(PKG / 'cli.py') and 'experiments' in imports(PKG / 'cli.py')
    assert imports(PKG / 'console.py') == {'cli'}   # seen inside a function too
    assert {'registry', 'core', 'cli'} <= imports(PKG / '__init__.py')

def test_public_api_is_short_and_shadows_nothing():
    api = tinylm.__all__
    assert 20 <= len(api) <= 50, len(api)
    modules = {m.split('.')[0] for m in LAYERS}
    assert not set(api) & modules, set(api) & modules
    for name in api: assert getattr(tinylm, name).__doc__, f'tinylm.{name} has no docstring'
