"""Sphinx configuration of mlcycle's documentation site: one page per notebook (their stored outputs, never executed) and
the reference pages in docs/. Build it from the repository's root with  sphinx-build -W -b html nbs _docs"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # the package of this checkout, for the charter reference
sys.path.insert(0, str(HERE/'docs'))          # docs/charter_reference.py: the directive that writes the charter tables

project = 'mlcycle'
author = 'mlcycle developers'
copyright = '2026 onwards, mlcycle developers'
extensions = ['myst_nb', 'charter_reference']
root_doc = 'index'                            # index.ipynb, which also generates README.md
exclude_patterns = ['_docs', '_proc', 'mlcycle-workspace', '**/.ipynb_checkpoints']
nb_execution_mode = 'off'                     # render the outputs stored in the notebooks; never run them
myst_heading_anchors = 3                      # `[...](page.md#a-heading)` links resolve to headings
myst_enable_extensions = ['colon_fence']
suppress_warnings = ['myst.header']           # nbdev notebooks start sections at any level
html_theme = 'alabaster'
html_theme_options = {'description': 'The whole life of a tabular ML model in nine executable notebooks',
                      'fixed_sidebar': True, 'sidebar_collapse': True}
html_sidebars = {'**': ['about.html', 'navigation.html', 'searchbox.html']}
html_show_sourcelink = False


def _outputs_inside_the_build(app):
    "myst-nb writes the notebooks' output files beside the build folder (../jupyter_execute); keep them inside it."
    cfg = app.env.mystnb_config
    app.env.mystnb_config = cfg.copy(output_folder=str((Path(app.doctreedir)/'jupyter_execute').resolve()))


def setup(app):
    app.connect('builder-inited', _outputs_inside_the_build, priority=900)   # after myst-nb's own (500)
