"""Model and user text inside Markdown that renders LaTeX ($...$, \\(...\\), \\[...\\]).

Word problems use '$' for money ("$12 an hour"), which the renderer would read as math, and the
model writes answers as a bare \\boxed{...}, which it would not. These helpers fix both.
"""

from __future__ import annotations

import re


def escape_dollars(text: str) -> str:
    r"""'$12 an hour' -> '\$12 an hour', so it is not taken for the start of a formula. Also what
    would make a viewer's browser fetch something: an HTML tag ('<img src=...>' -> '&lt;img ...')
    or a Markdown image ('![](http://...)' -> '!\[](...)'), and a line that would open a code
    fence (what closes it could come from other text); a shared trace's text is untrusted."""
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text).replace("![", "!\\[")
    text = re.sub(r"(?m)^(\s{0,3})(`{3,}|~{3,})", r"\1\\\2", text)
    return re.sub(r"(?<!\\)\$", r"\\$", text)


def wrap_boxed(text: str) -> str:
    r"""Put each bare \boxed{...} (balanced braces) inside $...$ so it renders as a boxed formula."""
    out, i = [], 0
    while True:
        j = text.find("\\boxed", i)
        k = text.find("{", j) if j >= 0 else -1
        if j < 0 or k < 0 or text[j + len("\\boxed"):k].strip():
            out.append(text[i:])
            return "".join(out)
        depth, end = 0, -1
        for m in range(k, len(text)):
            depth += {"{": 1, "}": -1}.get(text[m], 0)
            if depth == 0:
                end = m
                break
        if end < 0:  # unbalanced: leave the rest as it is
            out.append(text[i:])
            return "".join(out)
        inside_math = j > 0 and text[j - 1] == "$"
        out.append(text[i:j] + (text[j:end + 1] if inside_math else "$" + text[j:end + 1] + "$"))
        i = end + 1


_STEP_PREFIX = re.compile(r"^\s*step\s*\d+\s*[:.)-]\s*", re.IGNORECASE)


def step_title(comment: str) -> str:
    """A step's comment on one line, without the model's own "Step k:" (the page numbers steps)."""
    return _STEP_PREFIX.sub("", " ".join((comment or "").split())).strip()


def prose(text: str) -> str:
    """User or model prose for a LaTeX-enabled Markdown component."""
    return wrap_boxed(escape_dollars(text))


def code_span(text: str) -> str:
    """Inline code that cannot end early: a backtick in `text` (untrusted: a shared trace's output)
    would close the span and let the rest render as Markdown, so it becomes a look-alike (U+02CB)."""
    return "`" + " ".join(text.replace("`", "\u02cb").split("\n")) + "`"


def code_block(text: str, lang: str = "") -> str:
    """A fenced block whose fence is longer than any run of backticks inside, so `text` cannot
    close it and continue as Markdown."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"
