"""Read the user's files into Documents: text, Markdown, HTML, PDF (per page), DOCX, JSON/JSONL.

Each format goes through a well-kept library (pypdf, python-docx, BeautifulSoup with lxml).
A file that cannot be read raises `Unreadable` with the reason and the fix; the ingest skips
it, reports it, and goes on with the others.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tunelab.rag.documents import Document

SUFFIXES = (".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl")


class Unreadable(Exception):
    """A file tunelab cannot take text from; the message says why and what to do."""


def find_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to load, [(path, why it is skipped)]) under `paths`: folders are walked, hidden entries left out.

    A path that does not exist is an error the caller reports; unsupported files inside a
    folder are skipped silently, a file named directly with an unknown suffix is reported.
    """
    files, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [Path(root) / n for n in sorted(names)
                          if not n.startswith(".") and Path(n).suffix.lower() in SUFFIXES]
        elif p.is_file():
            if p.suffix.lower() in SUFFIXES:
                files.append(p)
            else:
                skipped.append((p, f"unsupported file type '{p.suffix}'; tunelab reads {', '.join(SUFFIXES)}"))
        else:
            raise FileNotFoundError(p)
    return list(dict.fromkeys(files)), skipped


def load(path: Path, data: bytes, field: str = "text") -> list[Document]:
    """The documents in one file, from its bytes. `field` is the text field of JSON/JSONL records."""
    if not data.strip():
        raise Unreadable("empty file")
    source = path.resolve().as_posix()
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf(path, source)
    if suffix == ".docx":
        return [Document(_docx(path), source, markdown=True)]
    text = read_text(data)
    if suffix in (".html", ".htm"):
        return [Document(html_to_text(text), source, markdown=True)]
    if suffix in (".json", ".jsonl"):
        return _records(text, source, field, lines=suffix == ".jsonl")
    return [Document(text, source, markdown=suffix in (".md", ".markdown"))]


def read_text(data: bytes) -> str:
    """Decode text by its byte-order mark, else UTF-8, else cp1252; refuse binary data."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16's
                          (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    sample = data[:8192]
    if b"\x00" in sample:
        raise Unreadable("binary data (it contains NUL bytes), not text; give the file its real extension")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    control = sum(b < 32 and b not in (9, 10, 12, 13) for b in sample) / len(sample)
    if control > 0.01:
        raise Unreadable(f"binary data ({control:.0%} control bytes), not text; give the file its real extension")
    return data.decode("cp1252", errors="replace")  # legacy 8-bit text


# ---------------------------------------------------------------- HTML

_DROP = ("script", "style", "noscript", "template", "nav", "footer", "aside", "form", "svg", "head")
_BLOCKS = {"p", "div", "section", "article", "main", "ul", "ol", "li", "table", "tr", "pre", "blockquote", "br",
           "hr", "dl", "dt", "dd", "figure", "figcaption", "h1", "h2", "h3", "h4", "h5", "h6"}


def html_to_text(html: str) -> str:
    """Readable text of a page: no scripts, styles or navigation; headings as Markdown `#` lines."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    for tag in soup(_DROP):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.name in ("td", "th"):
            tag.append(" | ")
        elif tag.name == "li":
            tag.insert(0, "- ")
        elif re.fullmatch(r"h[1-6]", tag.name):
            tag.insert(0, "#" * int(tag.name[1]) + " ")
        if tag.name in _BLOCKS:
            tag.insert_before("\n")
            tag.insert_after("\n")
    lines = (re.sub(r"\s+", " ", line).strip() for line in soup.get_text().splitlines())
    text, blank = [], False
    for line in lines:  # one blank line between blocks, at most
        if line:
            if blank and text:
                text.append("")
            text.append(line)
        blank = not line
    return "\n".join(text)


# ---------------------------------------------------------------- PDF and DOCX


def _pdf(path: Path, source: str) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it logs every repair it makes
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("an encrypted PDF that needs a password; save a decrypted copy "
                             "(e.g. qpdf --decrypt --password=PW in.pdf out.pdf) and index that")
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            try:
                text = page.extract_text() or ""
            except Exception:  # noqa: BLE001  odd fonts and broken content streams fail one page, not the file
                text = ""
            if text.strip():
                pages.append(Document(text, source, page=number))
    except DependencyError as e:
        raise Unreadable(f"this PDF needs an optional package: {e}; install it with pip install 'pypdf[crypto]'")
    except PyPdfError as e:
        raise Unreadable(f"not a readable PDF ({type(e).__name__}: {e}); check that the file is complete")
    if not pages:
        raise Unreadable("the PDF has no text layer (a scan?); run OCR on it first, e.g. ocrmypdf in.pdf out.pdf")
    return pages


def _docx(path: Path) -> str:
    import zipfile

    from docx import Document as Docx
    from docx.table import Table

    try:
        doc = Docx(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise Unreadable(f"not a readable .docx ({type(e).__name__}); an old .doc or a password-protected file "
                         "must be saved as .docx first")
    parts = []
    for block in doc.iter_inner_content():
        if isinstance(block, Table):
            parts += [" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows]
            continue
        text = block.text.strip()
        style = block.style.name if block.style is not None else ""
        level = re.fullmatch(r"Heading (\d)", style or "")
        if text and (level or style == "Title"):
            text = "#" * (int(level.group(1)) if level else 1) + " " + text
        if text:
            parts.append(text)
    if not parts:
        raise Unreadable("the document has no text")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- JSON and JSONL


def _records(text: str, source: str, field: str, lines: bool) -> list[Document]:
    name = source.rsplit("/", 1)[-1]
    docs, missing, seen = [], [], set()
    for number, record in _parse(text, name, lines):
        value = _get(record, field)
        if not isinstance(value, str) or not value.strip():
            missing.append(number)
            continue
        if value not in seen:  # the same passage in several records is indexed once
            seen.add(value)
            docs.append(Document(value, source, page=number))
    if not docs:
        keys = ", ".join(sorted(_first_keys(text, lines))) or "none"
        raise Unreadable(f"no record has a text field '{field}' (fields here: {keys}); choose one with --field")
    if missing:
        logging.getLogger(__name__).warning("%s: %d records without a text '%s' field were skipped (first at %s %d)",
                                            name, len(missing), field, "line" if lines else "item", missing[0])
    return docs


def _parse(text: str, name: str, lines: bool) -> Iterator[tuple[int, object]]:
    if lines:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise Unreadable(f"line {number} is not JSON ({e.msg}); fix or remove that line")
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise Unreadable(f"not valid JSON at line {e.lineno} ({e.msg})")
    yield from enumerate(value if isinstance(value, list) else [value], start=1)


def _get(record: object, field: str) -> object:
    """A dotted field (`meta.body`) of a record; a bare string record is its own text."""
    if isinstance(record, str):
        return record
    for key in field.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


def _first_keys(text: str, lines: bool) -> set[str]:
    try:
        first = next(iter(_parse(text, "", lines)), (0, {}))[1]
    except Unreadable:
        return set()
    return set(first) if isinstance(first, dict) else set()
