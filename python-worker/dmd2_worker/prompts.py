"""The `prompts` data source's text files (docs/recipe.md, docs/adapters.md §6).

- `data.prompts.file`: UTF-8, one prompt a line; surrounding whitespace is stripped, blank lines and lines starting
  with `#` are skipped. A file with no prompt left is an error naming the file.
- `captions.txt` of the image folder `data.prompts.images` (inside the folder, else beside it in its parent
  folder): `<file name>\\t<caption>` a line (blank lines and `#` comments skipped); an image without a line gets
  the empty prompt. A line without a tab, a name that is not an image of the folder, or a name given twice is an
  error naming the file and line.

Every error is a `PromptsError` (a DataSourceError): one line naming the recipe key, the file (and line), and the
fix.
"""
from __future__ import annotations

from pathlib import Path

from .data import DataSourceError

PROMPTS_KEY = "data.prompts.file"
IMAGES_KEY = "data.prompts.images"
CAPTIONS_FILE = "captions.txt"


class PromptsError(DataSourceError):
    """A prompts or captions file that cannot be used; `key` is the recipe key to fix."""


def _read_lines(path: Path, key: str) -> list[str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PromptsError(key, f"{key}: {path} does not exist (give a UTF-8 text file)") from None
    except IsADirectoryError:
        raise PromptsError(key, f"{key}: {path} is a folder, not a text file") from None
    except OSError as e:
        raise PromptsError(key, f"{key}: cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PromptsError(key, f"{key}: {path}:{line}: not UTF-8 (save the file as UTF-8)") from None
    return text.splitlines()


def _content(line: str) -> str | None:
    """A line's text, or None for a blank line or a `#` comment."""
    s = line.strip()
    return None if not s or s.startswith("#") else s


def parse_prompts(text_lines: list[str]) -> list[str]:
    return [s for s in map(_content, text_lines) if s is not None]


def read_prompts_file(path: str | Path, key: str = PROMPTS_KEY) -> list[str]:
    """The prompts of `path` in file order (duplicates kept: they weigh the uniform draw)."""
    path = Path(path)
    prompts = parse_prompts(_read_lines(path, key))
    if not prompts:
        raise PromptsError(key, f"{key}: {path} holds no prompts (one prompt a line; blank lines and # comments "
                                f"are skipped)")
    return prompts


def find_captions_file(images: Path) -> Path | None:
    """`<images>/captions.txt`, else `<images>/../captions.txt`, else None."""
    for candidate in (images / CAPTIONS_FILE, images.parent / CAPTIONS_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_captions(path: Path, names: list[str], key: str = IMAGES_KEY) -> dict[str, str]:
    """{file name: caption} for the image `names` that captions.txt `path` lists."""
    known = set(names)
    captions: dict[str, str] = {}
    for number, line in enumerate(_read_lines(path, key), start=1):
        if _content(line) is None:
            continue
        name, tab, caption = line.rstrip("\r\n").partition("\t")
        name = name.strip()
        if not tab:
            raise PromptsError(key, f"{key}: {path}:{number}: expected '<file name><TAB><caption>', got "
                                    f"{line.strip()[:60]!r} (separate the name from the caption with a tab)")
        if name not in known:
            raise PromptsError(key, f"{key}: {path}:{number}: {name!r} is not an image of the folder (fix the name or "
                                    f"remove the line)")
        if name in captions:
            raise PromptsError(key, f"{key}: {path}:{number}: {name!r} has a caption already (keep one line per image)")
        captions[name] = caption.strip()
    return captions
