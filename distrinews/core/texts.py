"""What a text must be before it reaches a tokenizer, and the one function that makes it so.

Any string JSON can carry is possible input: lone surrogates (``"\\ud800"`` is valid JSON, but no UTF-8 tokenizer
can take it; the Rust tokenizers raise ``TypeError`` for the whole batch), NUL and other control characters, bidi
and zero-width marks, a megabyte of one word. ``clean_text`` turns every such string into one a tokenizer
accepts, so one odd text cannot fail a batch it shares with others, and ``check_text`` also refuses a text with
nothing left to classify, with a message saying why. Both are pure and cheap (~1 µs for a plain headline).

What changes, and why it is safe for any tokenizer:

- a lone surrogate becomes U+FFFD, the replacement character (what a UTF-8 decoder gives for a broken byte);
- control characters (NUL, escapes, DEL, C1 controls) become spaces;
- invisible format characters (zero-width space, bidi overrides and isolates, the byte-order mark, soft hyphen,
  word joiners) are removed; ZWJ and ZWNJ stay, as some scripts and emoji sequences need them (BERT's own
  normalizer drops all of these too);
- the text is put in Unicode NFC form and runs of whitespace become one space.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from .errors import DataError, TextError

# Any character outside printable ASCII; plain ASCII headlines skip the per-character work entirely.
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_KEPT_FORMAT_CHARACTERS = {"\u200c", "\u200d"}  # ZWNJ, ZWJ: they change how some scripts and emoji render
# Where the characters that change are: whitespace, control, format and surrogate code points, all in planes 0, 1
# and 14 (the others hold letters, ideographs and private use); a test checks this against every code point.
_CHANGED_CATEGORIES = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}
_PLANES_WITH_CHANGES = (0, 1, 14)


def _replacement(char: str) -> str | None:
    """What ``clean_text`` makes of one character: a space, U+FFFD, nothing (None), or itself."""
    if char.isspace():
        return " "
    category = unicodedata.category(char)
    if category == "Cs":
        return "\ufffd"
    if category == "Cc":
        return " "
    if category == "Cf" and char not in _KEPT_FORMAT_CHARACTERS:
        return None
    return char


@functools.cache
def _translation() -> tuple[dict[int, str | None], re.Pattern]:
    """Every character that changes and what it becomes (for str.translate), and a pattern for runs of them. Built
    on the first text that needs it, not at import: it looks at every code point of three planes."""
    candidates = (chr(code) for plane in _PLANES_WITH_CHANGES for code in range(plane << 16, (plane + 1) << 16))
    changes = {ord(char): new for char in candidates
               if unicodedata.category(char) in _CHANGED_CATEGORIES and (new := _replacement(char)) != char}
    return changes, _runs_of(changes)


def _runs_of(codes) -> re.Pattern:
    """A pattern matching runs of the characters ``codes``, written as ranges of consecutive code points."""
    ranges, codes = [], sorted(codes)
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return re.compile("[" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in ranges) + "]+")


def _changed(text: str) -> str:
    # str.translate looks each character up in the table, which is slow for the many that are not there unless the
    # text is ASCII; elsewhere only the runs that change are found (one C-level scan) and translated.
    changes, changed_runs = _translation()
    if text.isascii():
        return text.translate(changes)
    return changed_runs.sub(lambda run: run.group().translate(changes), text)


def clean_text(text: str) -> str:
    """``text`` with surrogates replaced, control and invisible characters dropped, NFC, whitespace collapsed.

    Idempotent. The result may be empty; ``check_text`` refuses that."""
    if not isinstance(text, str):
        raise TextError(f"must be a string, not {type(text).__name__}")
    if _NOT_PRINTABLE_ASCII.search(text):
        text = unicodedata.normalize("NFC", _changed(text))
    return " ".join(text.split())


def cut_texts(texts, max_chars: int) -> tuple[list, list[bool]]:
    """Each text cut to its first ``max_chars`` characters, and which were cut. Done before anything else, so the
    work on a text is bounded whatever its length; anything that is not a string is left for ``check_text``."""
    cut = [isinstance(text, str) and len(text) > max_chars for text in texts]
    return [text[:max_chars] if was_cut else text for text, was_cut in zip(texts, cut)], cut


def check_text(text: str) -> str:
    """``clean_text(text)``, refusing a text that is empty once cleaned."""
    cleaned = clean_text(text)
    if not cleaned:
        raise TextError("is empty or holds only whitespace, control or invisible characters")
    return cleaned


def check_texts(texts, where: str = "texts") -> list[str]:
    """``check_text`` for each text; the error names the first bad one as ``where[index]``."""
    return each_text(check_text, texts, where=f"{where}[", after="]")


def each_text(function, texts, where: str, after: str = "") -> list[str]:
    """``function`` of each text; its ``TextError`` names the text as ``where`` + index + ``after``."""
    results = []
    for index, text in enumerate(texts):
        try:
            results.append(function(text))
        except TextError as err:
            raise TextError(f"{where}{index}{after} {err}") from None
    return results


def check_utf8(path, unit: str = "line") -> None:
    """Refuse a file that is not UTF-8, naming the ``unit`` (line, or row for training data) and the column where
    its first bad byte is."""
    with open(path, "rb") as handle:
        for number, content in enumerate(handle, start=1):
            try:
                content.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: {unit} {number}: bytes that are not UTF-8 at column {err.start + 1} "
                                f"({content[err.start:err.start + 4]!r}); re-save the file as UTF-8") from None
