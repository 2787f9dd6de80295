"""Where source code names a teacher family (docs/adapters.md, "Adding a family"): the check behind
test_family_names.py, and a command line (`python python-worker/tests/family_names.py` lists what it finds).

A family is named by its registry name (families.json) or one of its pipeline classes. The check reads code and
string literals, not comments or docstrings (prose may say which families exist):
- a pipeline class name anywhere in code or in a string (`StableDiffusionXLPipeline` as a word);
- a family name as a whole string literal (`family == "sdxl"`, `{"sdxl": ...}`) or as an identifier
  (`net.sdxl`, `sdxl:` as a key), import statements aside (a module may share a family's name).
Files checked: src/**/*.ts, bin/*, python-worker/dmd2_worker/**/*.py, except each family's own adapter files (its
registry entry's `adapter.files`), the registry readers and the few (file, name) pairs of ALLOWED, each with its
reason.
"""
from __future__ import annotations

import ast
import io
import json
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "python-worker" / "dmd2_worker" / "families.json"
READERS = ("src/families.ts", "python-worker/dmd2_worker/families.py")
# (file, name) pairs allowed, each with its reason; keep this short.
ALLOWED = {
    # `dmd2 plan --json`'s network.unet2d (a UNet2DModel folder's arch) predates the registry: renaming the key
    # would change the JSON scripts read
    ("src/plan/network.ts", "unet2d"), ("src/plan/format.ts", "unet2d"),
}


@dataclass(frozen=True)
class Hit:
    file: str
    line: int
    name: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: names {self.name!r}: {self.text.strip()[:120]}"


def registry_names(registry: Path = REGISTRY) -> tuple[set[str], set[str], set[str]]:
    """(family names, pipeline class names, exempt files relative to the project root)."""
    raw = json.loads(registry.read_text(encoding="utf-8"))
    fams = raw["families"]
    names = set(fams)
    pipelines = {p for f in fams.values() for p in [*f["pipeline_classes"], f["export"]["pipeline"]]}
    exempt = {p for f in fams.values() for p in f["adapter"]["files"]} | set(READERS)
    return names, pipelines, exempt


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")


def _string_hits(content: str, names: set[str], pipelines: set[str]) -> list[str]:
    found = [p for p in pipelines if _word(p).search(content)]
    found += [n for n in names if content == n]
    return found


# --- Python ------------------------------------------------------------------------------------------------------

def _bare_string_lines(source: str) -> set[int]:
    """First lines of string literals that are statements of their own (docstrings and the like)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            lines.add(node.lineno)
    return lines


def scan_python(source: str, file: str, names: set[str], pipelines: set[str]) -> list[Hit]:
    hits: list[Hit] = []
    bare = _bare_string_lines(source)
    lines = source.splitlines()
    in_import = False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        row = tok.start[0]
        text = lines[row - 1] if row - 1 < len(lines) else ""
        if tok.type == tokenize.NAME and tok.string in ("import", "from") and tok.start[1] == len(text) - len(text.lstrip()):
            in_import = True
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            in_import = False
        if tok.type == tokenize.NAME and not in_import:
            for n in [*names, *pipelines]:
                if tok.string == n:
                    hits.append(Hit(file, row, n, text))
        elif tok.type == tokenize.STRING and row not in bare:
            try:
                content = ast.literal_eval(tok.string)
                found = _string_hits(content, names, pipelines) if isinstance(content, str) else []
            except (ValueError, SyntaxError):  # an f-string: its text, and any quoted literal inside its braces
                content = tok.string
                found = [p for p in pipelines if _word(p).search(content)]
                found += [n for n in names if re.search(rf"['\"]{re.escape(n)}['\"]", content)]
            hits += [Hit(file, row, n, text) for n in found]
    return hits


# --- TypeScript / JavaScript -------------------------------------------------------------------------------------

def _ts_split(source: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(code pieces, string literal contents), each with its line: comments dropped, template literals' `${...}`
    read as code."""
    code: list[tuple[int, str]] = []
    strings: list[tuple[int, str]] = []
    i, n, line = 0, len(source), 1
    buf, buf_line = [], 1
    stack: list[int] = []  # brace depth at each open template's ${

    def flush() -> None:
        nonlocal buf, buf_line
        if buf:
            code.append((buf_line, "".join(buf)))
        buf, buf_line = [], line

    depth = 0
    while i < n:
        c = source[i]
        if c == "/" and source.startswith("//", i):
            j = source.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "/" and source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += source.count("\n", i, j)
            i = j
            continue
        if c in "\"'":
            flush()
            j, start_line, out = i + 1, line, []
            while j < n and source[j] != c and source[j] != "\n":
                if source[j] == "\\" and j + 1 < n:
                    out.append(source[j:j + 2])
                    j += 2
                    continue
                out.append(source[j])
                j += 1
            strings.append((start_line, "".join(out)))
            buf.append('""')
            i = j + 1
            continue
        if c == "`" or (c == "}" and stack and stack[-1] == depth):
            if c == "}":
                stack.pop()
            flush()
            j, start_line, out = i + 1, line, []
            while j < n and source[j] != "`" and not source.startswith("${", j):
                if source[j] == "\\" and j + 1 < n:
                    out.append(source[j:j + 2])
                    j += 2
                    continue
                if source[j] == "\n":
                    line += 1
                out.append(source[j])
                j += 1
            strings.append((start_line, "".join(out)))
            buf.append('""')
            if source.startswith("${", j):
                stack.append(depth)
                i = j + 2
            else:
                i = j + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "\n":
            buf.append(c)
            line += 1
            i += 1
            continue
        buf.append(c)
        i += 1
    flush()
    return code, strings


def scan_ts(source: str, file: str, names: set[str], pipelines: set[str]) -> list[Hit]:
    hits: list[Hit] = []
    lines = source.splitlines()
    code, strings = _ts_split(source)
    for start, piece in code:
        for k, text in enumerate(piece.split("\n")):
            if re.match(r"\s*(import|export)\b.*\bfrom\b", text):
                continue
            for name in [*names, *pipelines]:
                if _word(name).search(text):
                    row = start + k
                    hits.append(Hit(file, row, name, lines[row - 1] if row - 1 < len(lines) else text))
    for row, content in strings:
        hits += [Hit(file, row, n, lines[row - 1] if row - 1 < len(lines) else content)
                 for n in _string_hits(content, names, pipelines)]
    return hits


# --- the project -------------------------------------------------------------------------------------------------

def source_files(root: Path = ROOT) -> list[Path]:
    files = [*sorted((root / "src").rglob("*.ts")), *sorted(p for p in (root / "bin").iterdir() if p.is_file()),
             *sorted((root / "python-worker" / "dmd2_worker").rglob("*.py"))]
    return [f for f in files if "__pycache__" not in f.parts]


def scan_project(root: Path = ROOT, registry: Path = REGISTRY) -> list[Hit]:
    names, pipelines, exempt = registry_names(registry)
    hits: list[Hit] = []
    for f in source_files(root):
        rel = f.relative_to(root).as_posix()
        if rel in exempt:
            continue
        text = f.read_text(encoding="utf-8")
        scan = scan_python if f.suffix == ".py" else scan_ts
        hits += [h for h in scan(text, rel, names, pipelines) if (h.file, h.name) not in ALLOWED]
    return hits


if __name__ == "__main__":
    found = scan_project()
    print("\n".join(map(str, found)) or "no source file names a family")
    sys.exit(1 if found else 0)
