"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which this project does not use).

    python nbs/docs/readme.py            # regenerate README.md
    python nbs/docs/readme.py --check    # exit 1 if README.md differs from what index.ipynb gives

The markdown cells are joined in order; a cell tagged `docs-only` (the site's table of contents) is left out, and a
relative link is rewritten from nbs/ to the repository's root (docs/charter.md -> nbs/docs/charter.md)."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES, MAX_WIDTH = 250, 200


def _link(m) -> str:
    target = m.group(2)
    if re.match(r'[a-z]+:|#|/', target): return m.group(0)
    return f'{m.group(1)}(nbs/{target})'


def readme_text(nb_path: Path = ROOT/'nbs'/'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    parts = []
    for cell in nb['cells']:
        if cell['cell_type'] != 'markdown' or 'docs-only' in cell.get('metadata', {}).get('tags', []): continue
        src = ''.join(cell['source']).strip('\n')
        parts.append(re.sub(r'(\[[^\]]*\])\(([^)\s]+)\)', _link, src))
    text = '<!-- Generated from nbs/index.ipynb by `python nbs/docs/readme.py`: edit the notebook, not this file. -->\n' + '\n\n'.join(parts) + '\n'
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f'README would have {len(lines)} lines (at most {MAX_LINES})'
    wide = [i + 1 for i, l in enumerate(lines) if len(l) > MAX_WIDTH]
    assert not wide, f'README lines over {MAX_WIDTH} characters: {wide}'
    return text


if __name__ == '__main__':
    text, out = readme_text(), ROOT/'README.md'
    if '--check' in sys.argv[1:]:
        same = out.exists() and out.read_text(encoding='utf-8') == text
        print('README.md is up to date' if same else 'README.md differs from nbs/index.ipynb: run python nbs/docs/readme.py')
        sys.exit(0 if same else 1)
    out.write_text(text, encoding='utf-8')
    print(f'wrote {out.name}: {len(text.splitlines())} lines')
