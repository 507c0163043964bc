"""Sphinx configuration of tinylm's documentation site; `build.py` (next to it) writes the sources and runs Sphinx."""
import configparser, importlib.util, os
from pathlib import Path

_cfg = configparser.ConfigParser(delimiters=['='])
_cfg.read(Path(os.environ.get('TINYLM_DOCS_ROOT', Path(__file__).resolve().parents[2])) / 'settings.ini', encoding='utf-8')
_s = _cfg['DEFAULT']

project = _s['lib_name']
author = _s['author']
copyright = _s['copyright']
release = version = _s['version']

extensions = [
    'myst_nb',                  # notebooks and Markdown through MyST, outputs as committed
]
# MathJax 3 from the sphinx-mathjax-offline package, copied into the site's _static/ (its own Sphinx extension would do
# the same, but does not declare itself safe for parallel builds)
_mathjax = Path(importlib.util.find_spec('sphinx-mathjax-offline').submodule_search_locations[0]) / 'static'
mathjax_path = 'mathjax/tex-chtml.js'
nb_execution_mode = 'off'       # never re-execute: the pages show what the notebooks' committed runs printed
nb_output_stderr = 'show'
nb_merge_streams = True
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'html_image']
myst_dmath_double_inline = True
myst_heading_anchors = 4
suppress_warnings = ['myst.header']   # notebooks may step from # to ### inside a section
root_doc = 'index'
exclude_patterns = ['**.ipynb_checkpoints']

html_theme = 'furo'
html_title = 'tinylm'
html_static_path = [str(Path(__file__).parent / 'static'), str(_mathjax)]
html_css_files = ['tinylm.css']
html_copy_source = False        # the notebooks are in the repository; the site does not carry a second copy
html_show_sourcelink = False
html_theme_options = {'source_repository': _s['git_url'].rstrip('/') + '/', 'source_branch': _s.get('branch', 'main'),
                      'source_directory': 'nbs/', 'navigation_with_keys': True}
