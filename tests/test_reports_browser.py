"""The reports of the session's full circle, opened in a real browser (headless Chromium driven by Playwright): the first
screen of each stage report shows findings, not code, and the run's index links the documents the stages wrote."""
import shutil, time
from pathlib import Path

import pytest

# What a reader sees without scrolling, at a laptop's 1280x800: the elements whose box starts above the fold.
FIRST_SCREEN = """() => {
  const fold = window.innerHeight;
  const seen = sel => [...document.querySelectorAll(sel)].filter(e => {
    const r = e.getBoundingClientRect(); return r.top < fold && r.bottom > 0 && r.width > 0 && r.height > 0; });
  return {
    headings: seen('h1, h2, h3').map(e => e.innerText.trim()).filter(t => t),
    tables: seen('.jp-OutputArea-output table').length,
    images: seen('.jp-OutputArea-output img, .jp-OutputArea-output svg').length,
    verdicts: seen('.jp-OutputArea-output pre').map(e => e.innerText.trim()).filter(t => t).length,
    code: seen('.jp-CodeCell .jp-InputArea-editor, .jp-CodeCell .jp-Cell-inputWrapper .highlight').length,
  };
}"""


def first_screen_problems(screen: dict) -> list[str]:
    "Why a first screen does not show findings (empty when it does): it needs a heading and a table, an image or a printed verdict, and no code."
    problems = []
    if not screen['headings']: problems.append('no heading')
    if not (screen['tables'] or screen['images'] or screen['verdicts']): problems.append('no table, image or printed verdict')
    if screen['code']: problems.append(f"{screen['code']} code input area(s)")
    return problems


@pytest.fixture(scope='module')
def browser(chromium):
    "One page of the session's Chromium (`conftest.chromium`)."
    page = chromium.new_page(viewport={'width': 1280, 'height': 800})
    yield page
    page.close()


def screen_of(page, html: Path) -> dict:
    page.goto(html.as_uri(), wait_until='load')
    return page.evaluate(FIRST_SCREEN)


def test_stage_reports_open_on_findings_not_code(adult_circle, browser, tmp_path):
    t0 = time.perf_counter()
    runs = sorted(Path(adult_circle['reports']).glob('run-*/index.html'))
    assert runs, 'the full circle wrote no run index:\n' + adult_circle['stdout'][-3000:] + adult_circle['stderr'][-3000:]
    run_dir = runs[-1].parent
    reports = sorted(p for p in run_dir.glob('0[1-9]_*.html'))
    assert len(reports) >= 9, [p.name for p in reports]
    bad = {}
    for html in reports:
        screen = screen_of(browser, html)
        if first_screen_problems(screen): bad[html.name] = (first_screen_problems(screen), screen)
        assert f"href=\"{html.with_suffix('.ipynb').name}\"" in html.read_text(encoding='utf-8'), f'{html.name} does not link its notebook'
    assert not bad, bad

    # the check can say no: the same stage rendered with its code opens on code
    from mlcycle.reports import render_report
    nb = tmp_path/'08_governance.ipynb'
    shutil.copy(run_dir/'08_governance.ipynb', nb)
    with_code = render_report(nb, code=True)
    problems = first_screen_problems(screen_of(browser, with_code))
    assert any('code input' in p for p in problems), problems
    print(f'{len(reports)} reports + 1 with code checked in {time.perf_counter() - t0:.1f} s')


def test_index_links_the_documents(adult_circle, browser):
    run_dir = sorted(Path(adult_circle['reports']).glob('run-*/index.html'))[-1].parent
    browser.goto((run_dir/'index.html').as_uri(), wait_until='load')
    links = browser.evaluate("() => [...document.querySelectorAll('a')].map(a => [a.innerText.trim(), a.getAttribute('href')])")
    docs = {text: href for text, href in links if '_documents/' in (href or '')}
    for title in ('Model card', 'Bias report', 'Compliance map', 'Lineage', 'Drift report', 'A/B analysis', 'Knowledge-transfer report'):
        assert title in docs, (title, docs)
        assert (run_dir/docs[title]).is_file(), docs[title]
    # a document opens on its own content in the browser, with the images it shows (they came along with it)
    browser.goto((run_dir/docs['Bias report']).as_uri(), wait_until='load')
    images = browser.evaluate("() => [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    assert browser.evaluate("() => document.querySelector('h1').innerText").startswith('Bias report'), 'the bias report has no title'
    assert images and all(ok for _, ok in images), images
