"""A Sphinx directive that writes the charter reference from `mlcycle.charter` at build time, so the page cannot go stale.

`{charter-reference}` in a Markdown page gives, for the charter and each of its sections, a table of every field: its
type, its default (or "required") and the comment beside it in the schema's source; then the metrics an objective may
name, per task, and the kinds of derived feature."""
import inspect, re, typing

from docutils.parsers.rst import Directive
from pydantic import BaseModel


def _type(ann) -> str:
    s = str(ann) if not isinstance(ann, type) else ann.__name__
    s = re.sub(r"\btyping\.|\bmlcycle\.charter\.|<class '([^']+)'>", lambda m: m.group(1) or '', s)
    return s.replace('NoneType', 'None').replace('|', '\\|')


def _default(f) -> str:
    if f.is_required(): return 'required'
    v = f.default_factory() if f.default_factory is not None else f.default
    if isinstance(v, BaseModel): return 'its defaults'
    return f'`{v!r}`' if v not in ([], {}) else f'`{v!r}` (empty)'


def _comments(cls) -> dict:
    "The comment on each field's line in the class source, with the comment lines just above it."
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        s = line.strip()
        if s.startswith('#'): above.append(s.lstrip('# ')); continue
        m = re.match(r'(\w+)\s*:', s)
        if m and not s.startswith(('def ', '@', 'return')):
            tail = s.split('#', 1)[1].strip() if '#' in s and s.index('#') > s.find(':') else ''
            out[m.group(1)] = ' '.join(above + ([tail] if tail else []))
        above = []
    return out


def _models(cls, path='', seen=None):
    "The charter model and every section model under it, each with its dotted path."
    seen = seen if seen is not None else set()
    if cls in seen: return []
    seen.add(cls)
    found = [(path or 'charter', cls)]
    for name, f in cls.model_fields.items():
        for arg in [f.annotation, *typing.get_args(f.annotation), *[a for t in typing.get_args(f.annotation) for a in typing.get_args(t)]]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                sub = f'{path}.{name}' if path else name
                found += _models(arg, sub + ('[]' if typing.get_origin(f.annotation) is list else ''), seen)
    return found


def _limits(f) -> str:
    "The field's bounds from its pydantic metadata (ge=1 -> '≥ 1')."
    signs = (('ge', '≥'), ('gt', '>'), ('le', '≤'), ('lt', '<'), ('min_length', 'at least'), ('max_length', 'at most'))
    parts = [f'{sign} {getattr(m, k)}' for m in f.metadata for k, sign in signs if getattr(m, k, None) is not None]
    parts += [f'matches `{m.pattern}`' for m in f.metadata if getattr(m, 'pattern', None)]
    return (', ' + ', '.join(parts)) if parts else ''


def _cell(s) -> str: return str(s).replace('|', '\\|').replace('\n', ' ')


def charter_markdown() -> str:
    from mlcycle import charter as ch
    md = []
    for path, cls in _models(ch.Charter):
        notes = _comments(cls)
        doc = inspect.getdoc(cls) if cls.__doc__ else ''
        md += [f'**`{path}`** ({cls.__name__}){": " + _cell(doc) if doc else ""}', '',
               '| field | type | default | what it is |', '| --- | --- | --- | --- |']
        md += [f'| `{n}` | {_type(f.annotation)}{_cell(_limits(f))} | {_default(f)} | {_cell(notes.get(n, ""))} |' for n, f in cls.model_fields.items()]
        md += ['']
    md += ['**Metrics an objective may name** (`objectives[].metric`; `min` for a metric where higher is better, `max` otherwise; '
           'a fairness metric needs `sensitive_feature`)', '', '| metric | family | better | tasks |', '| --- | --- | --- | --- |']
    for m, (family, higher, _) in ch.METRICS.items():
        tasks = ', '.join(t for t, ms in ch.TASK_METRICS.items() if m in ms)
        md.append(f'| `{m}` | {family} | {"higher" if higher else "lower"} | {tasks} |')
    md += ['', '**Derived feature kinds** (`features[].kind`; see the derived-features page)', '',
           '| kind | what it makes | inputs | keys it takes | example |', '| --- | --- | --- | --- | --- |']
    for k, (what, n, keys, example) in ch.FEATURE_KINDS.items():
        md.append(f'| `{k}` | {_cell(what)} | {n if n is not None else "any"} | {", ".join(f"`{x}`" for x in sorted(keys)) or "none"} | `{_cell(example)}` |')
    return '\n'.join(md) + '\n'


class CharterReference(Directive):
    has_content = False

    def run(self):
        from docutils.statemachine import StringList
        from docutils import nodes
        node = nodes.section() if False else nodes.container()
        self.state.nested_parse(StringList(charter_markdown().splitlines(), source='mlcycle.charter'), self.content_offset, node)
        return node.children


def setup(app):
    app.add_directive('charter-reference', CharterReference)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
