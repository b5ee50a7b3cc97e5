"""The notebooks read as literate programs, and the package they export has a clean shape.

Fast: reads the notebooks' JSON and the source of memloc/*.py; runs no model and imports nothing of memloc.

How a code cell's length is counted: the lines of its source as they appear, blank lines included,
directive lines (`#| export`, `#| slow`, `#| hide`, ... : a line whose first non-blank characters are
`#|`) left out, and a final newline not counted as a line. A cell with no line left (empty, or
directives only) counts for neither the longest nor the median.

The checks, over nbs/*.ipynb unless said otherwise:

1. no code cell is longer than 60 lines;
2. the median code cell of each notebook is at most 12 lines;
3. no function defined at the top level of an unexported cell (one without `#| export`, `#| exports`
   or `#| exporti`) is defined in two notebooks: write it once, export it, import it;
4. no name with a leading underscore (dunders aside) is imported from another memloc module, in
   memloc/*.py or in a notebook (a notebook may import the private names of the module it exports);
5. the memloc modules import each other without a circle (imports inside functions count too).

Each failure names the notebook and the cell (its id and first line), or the modules in the circle.
"""
import ast
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
PKG = ROOT / "memloc"
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("_modidx",))
MAX_CELL, MAX_MEDIAN = 60, 12
DIRECTIVE = re.compile(r"^\s*#\|")
EXPORTED = re.compile(r"^\s*#\|\s*export(s|i)?\b", re.M)


def code_cells(path):
    "The code cells of a notebook as (id, source)."
    return [(c.get("id", "?"), "".join(c["source"])) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code"]


def counted_lines(src):
    "The lines of a cell that count: all but the directives (a final newline is no line)."
    return [l for l in src.rstrip("\n").split("\n") if not DIRECTIVE.match(l)] if src.strip() else []


def first_line(src):
    return next((l.strip() for l in counted_lines(src) if l.strip()), "")[:70]


def where(path, cid, src):
    return f"{path.name} cell {cid} ({first_line(src)!r})"


def lengths(path):
    "Counted length of every code cell that has a counted line, as (id, source, n)."
    return [(cid, src, len(ls)) for cid, src in code_cells(path) if (ls := counted_lines(src))]


def default_exp(path):
    for _, src in code_cells(path):
        if m := re.search(r"^#\|\s*default_exp\s+(\S+)", src, re.M):
            return m.group(1)


def parse_cell(src):
    "A cell's top-level AST, with IPython magics and shell lines blanked; None if it still does not parse."
    text = "\n".join("" if l.lstrip().startswith(("%", "!")) else l for l in src.split("\n"))
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


def memloc_imports(tree, here=None):
    "Every import of a memloc module in `tree` (any depth) as (module, [imported names], lineno)."
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                mod = node.module or ""
            elif node.module and (node.module == "memloc" or node.module.startswith("memloc.")):
                mod = node.module[len("memloc."):] if node.module != "memloc" else ""
            else:
                continue
            if mod:
                yield mod.split(".")[0], [a.name for a in node.names], node.lineno
            else:   # `from memloc import x` / `from . import x`: x is a module when memloc/x.py exists
                for a in node.names:
                    if a.name in MODULES:
                        yield a.name, [], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("memloc."):
                    yield a.name.split(".")[1], [], node.lineno


def private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_no_long_cell(path):
    long = [f"{where(path, cid, src)}: {n} lines" for cid, src, n in lengths(path) if n > MAX_CELL]
    assert not long, f"code cells over {MAX_CELL} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_median_cell_is_short(path):
    ls = lengths(path)
    if not ls:
        return
    med = statistics.median(n for *_, n in ls)
    longest = sorted(ls, key=lambda t: -t[2])[:5]
    assert med <= MAX_MEDIAN, (f"{path.name}: median code cell {med} lines (at most {MAX_MEDIAN}); longest: "
                               + "; ".join(f"{where(path, cid, src)} {n}" for cid, src, n in longest))


def test_no_unexported_function_written_twice():
    defs = defaultdict(list)
    for path in NBS:
        for cid, src in code_cells(path):
            if EXPORTED.search(src) or (tree := parse_cell(src)) is None:
                continue
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defs[node.name].append(where(path, cid, src))
    twice = {name: ws for name, ws in defs.items() if len({w.split(" cell ")[0] for w in ws}) > 1}
    assert not twice, "unexported functions defined in more than one notebook (export once, import):\n" + \
        "\n".join(f"{name}: " + "; ".join(ws) for name, ws in sorted(twice.items()))


def test_no_private_import_in_package():
    bad = []
    for mod in MODULES:
        tree = ast.parse((PKG / f"{mod}.py").read_text())
        for target, names, line in memloc_imports(tree):
            bad += [f"memloc/{mod}.py:{line} imports {n} from memloc.{target}"
                    for n in names if private(n) and target != mod]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_no_private_import_in_notebook(path):
    own, bad = default_exp(path), []
    for cid, src in code_cells(path):
        if (tree := parse_cell(src)) is None:
            continue
        for target, names, _ in memloc_imports(tree):
            bad += [f"{where(path, cid, src)} imports {n} from memloc.{target}"
                    for n in names if private(n) and target != own]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def import_graph():
    "memloc module -> the memloc modules it imports (at any depth of its source)."
    return {mod: {t for t, _, _ in memloc_imports(ast.parse((PKG / f"{mod}.py").read_text()))
                  if t != mod and t in MODULES}
            for mod in MODULES}


def circles(graph):
    "The strongly connected components of more than one module (Tarjan), each sorted."
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_circles_finds_a_circle():
    test = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(test) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    graph = import_graph()
    found = circles(graph)
    assert not found, "memloc modules that import each other in a circle:\n" + "\n".join(
        " <-> ".join(c) + "  (" + "; ".join(f"{a} imports {', '.join(sorted(graph[a] & set(c)))}" for a in c) + ")"
        for c in found)
