"""The documentation: README.md is what nbs/index.ipynb generates, and the site built from the notebooks and nbs/docs/
(`sphinx-build -W -b html nbs _docs`) builds without a warning, links only to pages and anchors that exist, documents every
charter field, and opens in a real browser (Debian's chromium, driven by Playwright) on its heading, with no error."""
import json, os, shutil, subprocess, sys, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT/'nbs'/'docs'))
import readme  # noqa: E402  (nbs/docs/readme.py: README.md from nbs/index.ipynb)


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    "The site, built once for this module from the checkout's notebooks and pages, nothing executed."
    out = tmp_path_factory.mktemp('docs')/'_docs'
    t0 = time.perf_counter()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html', str(ROOT/'nbs'), str(out)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, f'sphinx-build -W failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}'
    assert 'WARNING' not in r.stderr and 'ERROR' not in r.stderr, r.stderr[-4000:]
    print(f'site built in {time.perf_counter() - t0:.1f} s')
    return out


class _Page(HTMLParser):
    """The ids a page defines and the hrefs of its links. Links inside a notebook's stored outputs are left out: an output
    can show a document the notebook wrote (a model card), whose links point at files beside it in a workspace."""
    def __init__(self):
        super().__init__(); self.ids, self.hrefs, self.divs = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        if tag == 'div': self.divs.append('cell_output' in (a.get('class') or '').split())
        if tag == 'a' and a.get('href') is not None and not any(self.divs): self.hrefs.append(a['href'])

    def handle_endtag(self, tag):
        if tag == 'div' and self.divs: self.divs.pop()


def _parse(path: Path) -> _Page:
    p = _Page(); p.feed(path.read_text(encoding='utf-8')); return p


def broken_links(site: Path) -> list[str]:
    "Every relative link of every page whose file, or whose anchor in that file, does not exist."
    pages = {p: _parse(p) for p in site.rglob('*.html') if '_sources' not in p.parts}
    bad = []
    for page, parsed in pages.items():
        for href in parsed.hrefs:
            u = urlsplit(href)
            if u.scheme or u.netloc or href.startswith('//'): continue       # the web, mailto:
            target = (page.parent/unquote(u.path)).resolve() if u.path else page
            rel = page.relative_to(site)
            if not target.exists(): bad.append(f'{rel}: {href} (no file {target.name})'); continue
            if u.fragment and target.suffix == '.html':
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(u.fragment) not in ids: bad.append(f'{rel}: {href} (no anchor #{u.fragment})')
    return bad


def test_readme_is_generated_from_index_notebook(tmp_path):
    "README.md is exactly what nbs/index.ipynb gives (regenerated into a temp file and compared), and fits on a page."
    fresh = tmp_path/'README.md'
    fresh.write_text(readme.readme_text(), encoding='utf-8')
    current = (ROOT/'README.md').read_text(encoding='utf-8')
    assert fresh.read_text(encoding='utf-8') == current, 'README.md differs from nbs/index.ipynb: run python nbs/docs/readme.py'
    lines = current.splitlines()
    assert len(lines) <= readme.MAX_LINES and max(map(len, lines)) <= readme.MAX_WIDTH


def test_readme_check_fails_on_a_changed_notebook(tmp_path):
    "The comparison can say no: a notebook with one more sentence gives another README."
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
    nb['cells'][0]['source'] = ''.join(nb['cells'][0]['source']) + '\n\nOne more sentence.'
    changed = tmp_path/'index.ipynb'
    changed.write_text(json.dumps(nb), encoding='utf-8')
    assert readme.readme_text(changed) != (ROOT/'README.md').read_text(encoding='utf-8')


def test_index_notebook_is_not_exported_or_shipped():
    "nbs/index.ipynb exports nothing and runs nothing (nbdev_export and nbdev_test pass over it); setup.py ships only stage notebooks."
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
    assert all(c['cell_type'] == 'markdown' for c in nb['cells'])
    assert not any('default_exp' in ''.join(c['source']) for c in nb['cells'])
    assert "glob('[0-9][0-9]_*.ipynb')" in (ROOT/'setup.py').read_text(encoding='utf-8')


def test_readme_links_resolve():
    "Every relative link of README.md names a file of the repository."
    import re
    text = (ROOT/'README.md').read_text(encoding='utf-8')
    links = [m for m in re.findall(r'\]\(([^)\s]+)\)', text) if not re.match(r'[a-z]+:', m)]
    assert links
    missing = [l for l in links if not (ROOT/l.split('#')[0]).exists()]
    assert not missing, missing


def test_site_has_a_page_per_notebook_and_topic(site):
    for nb in (ROOT/'nbs').glob('*.ipynb'):
        assert (site/f'{nb.stem}.html').exists(), nb.name
    for md in (ROOT/'nbs'/'docs').glob('*.md'):
        assert (site/'docs'/f'{md.stem}.html').exists(), md.name


def test_every_link_between_pages_resolves(site):
    assert broken_links(site) == []


def test_link_check_can_fail(site, tmp_path):
    "The checker sees a missing page and a missing anchor."
    copy = tmp_path/'site'
    shutil.copytree(site, copy, ignore=shutil.ignore_patterns('_images', '_sources'))
    home = copy/'index.html'
    home.write_text(home.read_text(encoding='utf-8').replace('</body>', '<a href="docs/nope.html">x</a><a href="docs/charter.html#nope">y</a></body>'),
                    encoding='utf-8')
    bad = broken_links(copy)
    assert any('nope.html' in b for b in bad) and any('#nope' in b for b in bad), bad


def test_charter_reference_lists_every_field(site):
    "The charter page is generated from the schema: every field of every section, every metric and feature kind is on it."
    from mlcycle import charter as ch
    sys.path.insert(0, str(ROOT/'nbs'/'docs'))
    from charter_reference import _models
    text = (site/'docs'/'charter.html').read_text(encoding='utf-8')
    for path, cls in _models(ch.Charter):
        assert path in text, path
        for name in cls.model_fields: assert f'>{name}<' in text, (path, name)
    for name in [*ch.METRICS, *ch.FEATURE_KINDS]: assert f'>{name}<' in text, name




@pytest.mark.parametrize('page_name, heading', [('index.html', 'mlcycle'), ('01_problem_definition.html', 'Problem definition')])
def test_pages_open_in_a_browser(site, chromium, page_name, heading):
    "The home page and a stage page show their heading in the first screen, and the browser reports no error."
    page = chromium.new_page(viewport={'width': 1280, 'height': 800})
    errors = []
    page.on('pageerror', lambda e: errors.append(f'script error: {e}'))
    page.on('console', lambda m: errors.append(f'console: {m.text}') if m.type == 'error' else None)
    page.on('requestfailed', lambda r: errors.append(f'failed to load {r.url}'))
    page.goto((site/page_name).as_uri(), wait_until='load')
    h1 = page.locator('[role="main"] h1').first          # the page's own heading, not the sidebar's logo
    assert h1.is_visible() and heading in h1.inner_text(), h1.inner_text()
    assert h1.bounding_box()['y'] < 800
    assert page.locator('.output.traceback, .output.error').count() == 0
    page.close()
    assert not errors, errors


def test_readme_map_states_the_import_order():
    """The README's map says that, when imported, each module imports only modules above it or in its own row, with three
    exceptions it names; every module of the package is in the map."""
    import re
    rows = [l for l in (ROOT/'README.md').read_text(encoding='utf-8').splitlines() if l.startswith('| ') and '`mlcycle.' in l]
    row_of = {}
    for i, l in enumerate(rows):
        cell = l.split('|')[3]
        for m in re.findall(r'`(?:mlcycle)?\.(\w+)`', cell): row_of[m] = i
    modules = {p.stem for p in (ROOT/'mlcycle').glob('*.py') if not p.stem.startswith('_')}
    assert modules <= set(row_of), sorted(modules - set(row_of))
    exceptions = {('feasibility', 'data'), ('init', 'data'), ('model_checks', 'drift')}
    later = set()
    for m in modules:
        src = (ROOT/'mlcycle'/f'{m}.py').read_text(encoding='utf-8')
        for dep in set(re.findall(r'^from (?:\.|mlcycle\.)(\w+) import', src, re.M)) - {m}:
            if dep in row_of and row_of[dep] > row_of[m]: later.add((m, dep))
    assert later == exceptions, f'imports of a module below in the map: {sorted(later)}; the README names {sorted(exceptions)}'
