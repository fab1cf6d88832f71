"""The `slow` test flag on notebook cells (settings.ini `tst_flags`): `tests/run_all.sh` runs `nbdev_test` without it, because
the suite executes those cells elsewhere. This holds only while the flag marks exactly that work: each stage notebook's
`## Run` section, which `mlcycle run` executes through papermill in `test_mlcycle_run_is_the_full_circle`, and the
`run_lifecycle` example of the CLI notebook, which `mlcycle run --stages 01,02` executes in `test_foundation.py`."""
import re

import nbformat
import pytest

from conftest import ROOT

RUN = re.compile(r'^## Run\b')
STAGE = re.compile(r'^(0[1-9])_([a-z0-9_]+)\.ipynb$')


def _directives(src: str) -> list[str]:
    return [l.strip()[2:].strip() for l in src.splitlines() if l.strip().startswith('#|')]


def _is_slow(c) -> bool: return any(re.match(r'slow\b', d) for d in _directives(c.source))
def _is_export(c) -> bool: return any(re.match(r'export', d) for d in _directives(c.source))


def test_slow_flag_is_in_tst_flags():
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    assert 'slow' in cfg['DEFAULT']['tst_flags'].split()


@pytest.mark.parametrize('nb', sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb')))
def test_slow_cells_are_the_work_the_suite_runs_elsewhere(nb):
    cells = nbformat.read(ROOT/'nbs'/nb, as_version=4).cells
    start = next((i for i, c in enumerate(cells) if c.cell_type == 'markdown' and RUN.match(c.source)), None)
    for i, c in enumerate(cells):
        if c.cell_type != 'code': continue
        in_run = STAGE.match(nb) is not None and start is not None and i > start
        if in_run and not _is_export(c):      # the stage's own run on the workspace: the full circle executes it
            assert _is_slow(c), f'{nb} cell {i}: a `## Run` cell without `#| slow` (nbdev_test would run the stage a second time)'
        elif _is_slow(c):                     # anywhere else, only the CLI notebook's lifecycle example (stage 01 via papermill)
            assert nb == '10_cli.ipynb' and 'run_lifecycle(' in c.source, \
                f'{nb} cell {i}: `#| slow` outside a stage notebook\'s `## Run` section: no test would ever execute it'
    if STAGE.match(nb): assert start is not None, f'{nb}: a stage notebook needs its `## Run` section (mlcycle run executes it)'
