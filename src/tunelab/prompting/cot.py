"""Chain-of-thought (Wei et al. 2022; zero-shot: Kojima et al. 2022) and finding the final answer in it.

Asking for the reasoning before the answer helps on multi-step problems, but then the
answer sits somewhere in a paragraph. The instruction asks for a fixed last line ("The
answer is X", or GSM8K's "#### X"); `extract_answer` reads that line, and also the other
ways models end (\\boxed{X}, "Answer: X"), so scoring and voting see only the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tunelab.eval.metrics import extract_number

STYLES = {
    "answer_is": ('Think step by step, then give the final answer on its own last line, as "The answer is X."',
                  "The answer is {answer}."),
    "gsm8k": ('Think step by step, then give the final answer on its own last line, as "#### X".',
              "#### {answer}"),
}

# the final-answer markers; the one that occurs last in the text wins
_MARKERS = [
    re.compile(r"####[ \t]*([^\n]*)"),
    re.compile(r"\banswer(?:[ \t]+is\b|[ \t]*:)[ \t]*:?[ \t]*([^\n]*)", re.IGNORECASE),
]
_BOXED = re.compile(r"\\(?:boxed|fbox)\{")
_DIGIT = re.compile(r"\d")


def cot_instruction(style: str = "answer_is") -> str:
    """The request for step-by-step reasoning ending in a fixed answer line."""
    return STYLES[style][0]


def with_final_line(output: str, style: str = "answer_is") -> str:
    """An example's answer as a chain-of-thought demonstration: kept when it already ends in a
    final-answer line (GSM8K solutions do), else given one, so the examples show the format asked for."""
    if _final_span(output) is not None:
        return output
    return STYLES[style][1].format(answer=output.strip().rstrip("."))


def _boxed(text: str) -> list[tuple[int, str]]:
    """(position, content) of each \\boxed{...}, braces balanced."""
    found = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append((m.start(), text[m.end():i - 1]))
    return found


def _final_span(text: str) -> str | None:
    """The text after the last final-answer marker, or None when there is none."""
    hits = _boxed(text)
    for pattern in _MARKERS:
        hits += [(m.start(), m.group(1)) for m in pattern.finditer(text)]
    if not hits:
        return None
    return max(hits, key=lambda h: h[0])[1]


def _clean(span: str) -> str:
    """Drop the wrapping a model puts around an answer: markdown bold, $...$, quotes, a final full stop."""
    span = span.strip()
    for _ in range(3):
        span = span.strip(" *$`'\"").strip()
        span = re.sub(r"^\\boxed\{(.*)\}$", r"\1", span)
        span = re.sub(r"\.$", "", span).strip()
    return span


def format_number(value: float) -> str:
    """72.0 -> "72", 0.5 -> "0.5": one spelling per value, so votes for the same number agree."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)


def _mentioned(text: str, choices: Sequence[str], last: bool) -> str | None:
    """The choice mentioned first (or last) in `text`, whole words, any case; of two overlapping, the longer."""
    best, key = None, None
    for choice in choices:
        for m in re.finditer(r"(?<!\w)" + re.escape(choice.strip()) + r"(?!\w)", text, re.IGNORECASE):
            k = (m.end(), m.end() - m.start()) if last else (-m.start(), m.end() - m.start())
            if key is None or k > key:
                best, key = choice, k
    return best


def extract_answer(text: str, kind: str = "text", choices: Sequence[str] | None = None) -> str | None:
    """The final answer in a (chain-of-thought) output, or None when none is found.

    Markers, the last one in the text winning: `\\boxed{X}`, `#### X`, `The answer is X`, `Answer: X`.
    Args:
        kind: "text": the rest of the marker's line, cleaned of bold, quotes and a full stop;
            "number": the number after the marker, else the last number in the text, as
            "72" / "0.5" (thousands commas and $ ignored);
            "choice": the one of `choices` named first after the marker ("B, since A is wrong"), else the
            one mentioned last in the whole text.
    """
    span = _final_span(text)
    if kind == "text":
        cleaned = _clean(span) if span is not None else ""
        return cleaned or None
    if kind == "number":
        value = extract_number(span) if span is not None and _DIGIT.search(span) else None
        value = extract_number(text) if value is None else value
        return None if value is None else format_number(value)
    if kind == "choice":
        if not choices:
            raise ValueError("extract_answer(kind='choice') needs the list of choices")
        return (_mentioned(span, choices, last=False) if span is not None else None) or \
            _mentioned(text, choices, last=True)
    raise ValueError(f"extract_answer: kind '{kind}' is not known; choose text, number or choice")
