"""Rules for compound captions: split them into per-panel sub-captions, and refine them.

Pure functions, no I/O: the stages ``pathasst curate split`` and ``pathasst curate refine`` (and the
LLM path, which falls back on them) call :func:`split_caption` and :func:`refine_caption`.

Splitting
---------
A *marker* names one or more panels. The forms recognised:

- in parentheses, anywhere: ``(A)``, ``(a)``, ``(A, B)``, ``(B, D)``, ``(A and B)``, ``(A/B)``,
  ``(a–c)``, ``(A-C, E)``, ``(A1–A3)``, lower-case roman numerals ``(i)``, ``(ii–iv)``, and the
  positions ``(left)``, ``(upper panel)``, ``(top right)``, ``(inset)``; full-width ``（A）`` too;
- at the start of a sentence or clause (text start, or after ``. ; : ! ?`` and their CJK forms):
  ``A,``, ``A:``, ``A.``, ``A)``, ``A –``, ``A–C,``, ``A and B:``, ``A/B:``, ``A, B and C show ...``,
  and ``Left:``, ``Top,``, ``Upper panel:``, ``Lower panels show ...``, ``Inset:``.

What is *not* a marker, and why the rules say so:

- a letter inside a word, or followed by a letter (``T-cell``, ``S-100``, ``H&E``): a label is a
  single letter (optionally with one or two digits) standing alone;
- a letter that does not start a clause (``vitamin A.``, ``type B,``, ``hepatitis B/C``, ``Fig. A``:
  ``Fig.``, ``et al.``, ``e.g.`` and other abbreviations do not end a sentence);
- parentheses holding anything but a label list (``(p < 0.05)``, ``(n = 3)``, ``(Smith et al.,
  2019)``, ``(HE)``, ``(see A)``), glued to a word or followed by a hyphen (``Ca(II)``,
  ``(R)-enantiomer``), or after a unit word (``time (h)``);
- ``X. lowercase`` at a sentence start where X is a capital (``E. coli``, ``H. pylori``): a genus,
  unless the caption labels every panel that way;
- citations in brackets (``[12]``) and numbers in parentheses ``(1)``: numbered panels are left
  alone because numeric parentheses are citations in many journals.

Markers are then kept only if they form a plausible sequence (the *chain*): the first names panel
a/b/c, each next one names a panel after the previous one's first (``(A, C) ... (B, D)`` is fine),
skips at most one letter past the highest panel named so far, and keeps the letter case. This
drops back-references (``... as in (A).``) and stray letters (``tumour (T) and normal (N)``).
Position words are used only when a caption has no letter or numeral markers, and only two or
more of them (or an inset).

Each marker either *precedes* its text (``(A) Low power. (B) ...``) or *follows* it (``necrosis
(A) and haemorrhage (B).``); the caption's style is decided by a vote over its markers (a marker
at a clause start, or followed by a word, votes "precedes"). Preceding markers own the text up
to the next marker; the text before the first one is ``shared_prefix``. Following markers own the
text of their sentence since the previous marker, and the rest of the sentence after the last
marker (``... of the kidney.``) is shared by every panel of that sentence. Trailing clauses of
the last panel that describe all panels (scale bars, magnification, an H&E-only note, "All
images ...", statistics notes) become ``shared_suffix``; the last panel keeps at least one clause.

A range or list marker gives its text to each panel it names (``(B–D)`` -> B, C, D). Panels come
out in label order (position words: in order of appearance); a label named twice gets both texts.
A caption without markers is one panel with label None; an empty caption gives no panel.

Known limits (what the LLM path is for): numbered panels (``(1)``, ``1.``) are not split; an
inset inside a lettered panel stays in that panel's text; labels are Latin letters (with digits),
lower-case roman numerals or position words, so Cyrillic or Greek panel letters are not found;
one style (preceding or following) is chosen per caption, so captions that mix both are split
approximately; a statement that applies to all panels in the middle of a caption stays with the
panel it follows.

Everything runs in time linear in the caption: a few simple regular expressions with bounded
repetitions (no nested unbounded quantifiers, nothing that backtracks catastrophically) and scans
over the matches they find.

Refining
--------
:func:`refine_caption` removes the figure number (``Figure 3.``), bracketed reference markers and
superscript reference numbers, author-year citations and cross-references to other figures and
tables, and drops boilerplate sentences (``See text for details.``, the colour-reference note,
``Reproduced with permission from ...``, ``Courtesy of ...``). It normalises stain names and
magnifications through :data:`NORMALISATION_TABLE`. It never adds a fact: apart from the table's
outputs, every word it returns was in its input.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Optional

from pathasst.dataset_builders.extract.common import clean_text, split_caption_label

RULES_VERSION = "1"

__all__ = [
    "NORMALISATION_TABLE",
    "RULES_VERSION",
    "Panel",
    "SplitResult",
    "refine_caption",
    "split_caption",
]


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel of a figure: its label as printed (``"A"``, ``"b"``, ``"ii"``, ``"left"``; None
    for an unlabelled figure or the main image beside an inset) and its sub-caption."""

    label: Optional[str]
    subcaption: str

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "subcaption": self.subcaption}


@dataclasses.dataclass(frozen=True)
class SplitResult:
    """A caption split into panels.

    Attributes:
        shared_prefix: text before the first marker, true of every panel.
        shared_suffix: trailing text true of every panel (scale bars, stain, magnification).
        panels: the panels in label order; their sub-captions exclude the shared parts unless the
            split was asked to ``distribute`` them.
        markers_found: the markers as printed, in the order they occur (empty: no markers).
        figure_label: a figure number found at the start of the text (``Figure 3``), removed.
        distributed: whether the shared parts were copied into every sub-caption.
    """

    shared_prefix: str
    shared_suffix: str
    panels: list[Panel]
    markers_found: tuple[str, ...] = ()
    figure_label: Optional[str] = None
    distributed: bool = False

    @property
    def labels(self) -> list[Optional[str]]:
        return [p.label for p in self.panels]

    def panel(self, label: Optional[str]) -> Optional[Panel]:
        """The panel named ``label`` (letters compared case-insensitively), or None."""
        if label is None:
            return None
        key = label.strip().strip("()").casefold()
        for p in self.panels:
            if p.label is not None and p.label.casefold() == key:
                return p
        return None

    def distribute(self) -> "SplitResult":
        """The same split with the shared prefix and suffix copied into every sub-caption."""
        if self.distributed:
            return self
        panels = [Panel(p.label, _join(self.shared_prefix, p.subcaption, self.shared_suffix)) for p in self.panels]
        return dataclasses.replace(self, panels=panels, distributed=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shared_prefix": self.shared_prefix,
            "shared_suffix": self.shared_suffix,
            "panels": [p.to_dict() for p in self.panels],
            "markers": list(self.markers_found),
        }


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# markers

_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2212"  # hyphen, dashes, minus
_DASH = "\\" + _DASHES  # for character classes
_LAB = re.compile(r"[A-Za-z]\d{0,2}(?![A-Za-z\d])")
_ROMAN = {r: i for i, r in enumerate(
    "i ii iii iv v vi vii viii ix x xi xii xiii xiv xv xvi xvii xviii xix xx".split(), start=1)}
_ROMAN_LAB = re.compile(r"[ivx]{1,5}(?![A-Za-z\d])")
# between two labels of a list: a range ("A-C", "A to C") or an enumeration ("A, C", "A and C", "A/C")
_PAIR_SEP = (rf"(?P<range>\s*[{_DASH}]\s*|\s+(?:to|through|thru)\s+)"
             r"|(?P<enum>\s*,\s*(?:and\s+|&\s*)?|\s+(?:and|&|or)\s+|\s*/\s*)")
_PAIR = re.compile(rf"(?:{_PAIR_SEP})(?P<lab>[A-Za-z]\d{{0,2}})(?![A-Za-z\d])")
_ROMAN_PAIR = re.compile(rf"(?:{_PAIR_SEP})(?P<lab>[ivx]{{1,5}})(?![A-Za-z\d])")
_MAX_LIST = 26

_KW_WORD = r"(?:top|bottom|upper|lower|middle|centre|center|left|right|insets?)"
_KW_COMBO = rf"{_KW_WORD}(?:[\s-](?:left|right|middle|centre|center))?"
_KW_PANEL = r"(?:panels?|images?|rows?|columns?|micrographs?|photomicrographs?|photographs?|figures?|insets?)"
_KW_LIST = re.compile(
    rf"(?P<list>{_KW_COMBO}(?:(?:\s*,\s*(?:and\s+)?|\s+and\s+|\s*/\s*|\s*&\s*){_KW_COMBO}){{0,5}})"
    rf"(?:\s+(?P<panel>{_KW_PANEL}))?(?![A-Za-z])",
    re.IGNORECASE,
)
_KW_ONE = re.compile(_KW_COMBO, re.IGNORECASE)
_KW_VERBS = frozenset(
    "show shows showing demonstrate demonstrates demonstrating depict depicts illustrate illustrates "
    "highlight highlights reveal reveals display displays is are".split())

# parentheses that can hold a label list or position words: letters, digits, spaces and the list
# separators only ("(p < 0.05)", "(Smith et al., 2019)" are skipped by the regex engine itself)
_PAREN = re.compile(rf"[(\uff08](\s*[A-Za-z][A-Za-z0-9\s,/&{_DASH}]{{0,58}})[)\uff09]")
_CLAUSE_CANDIDATE = re.compile(
    r"[A-Za-z](?![A-Za-z])|[Pp]anels?\s|PANELS?\s"
    r"|(?i:top|bottom|upper|lower|middle|centre|center|left|right|insets?)(?![A-Za-z])")
_BOUNDARY_CANDIDATE = re.compile(
    r"(?:[.;:!?](?:[\"'\u201d\u2019])?\s+|[\u3002\uff1b\uff1a\uff01\uff1f]\s*)(?=" + _CLAUSE_CANDIDATE.pattern + ")")
_BOUNDARY_BEFORE = re.compile(r"(?:[.;:!?](?:[\"'\u201d\u2019])?\s+|[\u3002\uff1b\uff1a\uff01\uff1f]\s*)$")
_SENTENCE_END = re.compile(r"[.!?](?:[\"'\u201d\u2019)\]])?\s+|[\u3002\uff01\uff1f]\s*")
_CLOSE_ONLY = re.compile(r"(?:^|(?<=\s))([A-Za-z]\d{0,2})\)(?=\s|$|[,.;:])")
# after a clause-start label list: what makes it a marker
_DELIM = re.compile(r"\s*[,:](?:\s+|$)|\s*[\uff0c\uff1a]\s*|\.(?:\s+|$)|\)(?:\s+|$)|\s+[\u2013\u2014-]\s+")
_KW_DELIM = re.compile(r"\s*[,:](?:\s+|$)|\s*[\uff0c\uff1a]\s*|\.(?:\s+|$)|\s+[\u2013\u2014-]\s+")
# a lower-case word that continues a list or a name rather than starting what the panels show
_NOT_PREDICATE = re.compile(r"(?:and|or|to|through|cells?|lymphocytes?|type|antigen|vitamins?|groups?|blood)\b")
_PANEL_WORD = re.compile(r"(?:[Pp]anels?|PANELS?)\s+(?=[A-Za-z]\d{0,2}(?![A-Za-z\d]))")
_NEXT_WORD = re.compile(r"\s*([A-Za-z]+)")
# "." after these does not end a sentence (so "Fig. A, ..." does not start a clause)
_ABBREVIATIONS = frozenset(
    "fig figs figure figures al e.g eg i.e ie vs cf approx ca no nos dr mr mrs ms prof st sp spp var "
    "ref refs resp ed eds vol p pp mag orig obj etc incl min max".split())
# "(h)" after these is a unit, not a panel
_UNIT_WORDS = frozenset(
    "time times duration weight weights mass length volume size sizes concentration dose age day days "
    "hour hours temperature width height depth area diameter".split())
# species epithets: "A. fumigatus" at a sentence start is a genus, not panel A
_EPITHETS = frozenset(
    "coli pylori aureus albicans fumigatus flavus niger neoformans tuberculosis leprae avium gondii "
    "jirovecii carinii pneumoniae burgdorferi pallidum vaginalis histolytica lamblia intestinalis "
    "mansoni haematobium japonicum falciparum vivax malariae ovale dermatitidis capsulatum immitis "
    "brasiliensis israelii pyogenes agalactiae epidermidis difficile perfringens monocytogenes "
    "typhi enterica trachomatis gonorrhoeae meningitidis granulomatis granulomatosis donovani "
    "braziliensis cruzi spiralis stercoralis vermicularis lumbricoides saginata solium granulosus "
    "multilocularis marneffei apiospermum sinensis hepatica westermani".split())


@dataclasses.dataclass
class _Marker:
    start: int  # the marker's span in the text
    end: int
    labels: list[str]
    ords: list[tuple[int, int]]  # per label: (letter or numeral index, sub-number)
    kind: str  # letter | roman | keyword
    style: str  # paren (in or closed by a parenthesis) | clause (at a clause start)
    case: str  # upper | lower | - (keywords, roman)
    raw: str
    weak: bool = False  # "X. lowercase" at a sentence start: maybe a genus


def _letter_ord(label: str) -> tuple[int, int]:
    return ord(label[0].lower()) - 96, int(label[1:] or 0)


def _case(labels: list[str]) -> Optional[str]:
    cases = {"upper" if lab[0].isupper() else "lower" for lab in labels}
    return cases.pop() if len(cases) == 1 else None


def _parse_list(text: str, pos: int, endpos: int,
                roman: bool = False) -> Optional[tuple[list[tuple[str, bool]], list[int]]]:
    """``[(label, is_range_end)]`` of a label list starting at ``pos`` and the end of each label, or None."""
    first = (_ROMAN_LAB if roman else _LAB).match(text, pos, endpos)
    if not first:
        return None
    items = [(first.group(0), False)]
    ends = [first.end()]
    pair = _ROMAN_PAIR if roman else _PAIR
    while len(items) < _MAX_LIST:
        m = pair.match(text, ends[-1], endpos)
        if not m:
            break
        items.append((m.group("lab"), m.group("range") is not None))
        ends.append(m.end())
    return items, ends


def _expand(items: list[tuple[str, bool]], roman: bool = False) -> Optional[tuple[list[str], list[tuple[int, int]]]]:
    """Labels with ranges expanded, and their ordinals; None when it is no plausible label list."""
    labels: list[str] = []
    ords: list[tuple[int, int]] = []
    for lab, is_range in items:
        if roman:
            if lab not in _ROMAN:
                return None
            o = (_ROMAN[lab], 0)
        else:
            o = _letter_ord(lab)
        if is_range and labels:
            lo = ords[-1]
            if roman:
                if o[0] <= lo[0] or o[0] - lo[0] > 12:
                    return None
                inv = {v: k for k, v in _ROMAN.items()}
                for v in range(lo[0] + 1, o[0] + 1):
                    labels.append(inv[v])
                    ords.append((v, 0))
                continue
            prev = labels[-1]
            if prev[1:] and lab[1:] and prev[0] == lab[0] and o[1] > lo[1] and o[1] - lo[1] <= 12:
                for v in range(lo[1] + 1, o[1] + 1):  # A1-A3
                    labels.append(f"{lab[0]}{v}")
                    ords.append((o[0], v))
                continue
            if not prev[1:] and not lab[1:] and o[0] > lo[0] and o[0] - lo[0] <= 12:
                base = ord(prev[0])
                for v in range(1, o[0] - lo[0] + 1):  # B-D
                    labels.append(chr(base + v))
                    ords.append((lo[0] + v, 0))
                continue
            if o <= lo:
                return None
        elif ords and (o <= ords[-1] or o[0] - ords[-1][0] > 4):
            return None  # lists go up, in small steps ("B and T cells" is no list)
        labels.append(lab)
        ords.append(o)
    if not roman and _case(labels) is None:
        return None
    return labels, ords


def _letter_markers_in(inner: str) -> Optional[tuple[list[str], list[tuple[int, int]]]]:
    parsed = _parse_list(inner, 0, len(inner))
    if parsed is None or parsed[1][-1] != len(inner):
        return None
    return _expand(parsed[0])


def _roman_markers_in(inner: str) -> Optional[tuple[list[str], list[tuple[int, int]]]]:
    parsed = _parse_list(inner, 0, len(inner), roman=True)
    if parsed is None or parsed[1][-1] != len(inner):
        return None
    return _expand(parsed[0], roman=True)


def _keyword_labels(text: str) -> list[str]:
    out = []
    for m in _KW_ONE.finditer(text):
        word = re.sub(r"[\s-]+", " ", m.group(0).lower()).replace("center", "centre")
        out.append("inset" if word == "insets" else word)
    return out


_WORD_BEFORE = re.compile(r"([A-Za-z.]{1,13}) ?$")


def _word_before(text: str, pos: int) -> str:
    """The word just before ``pos`` (letters and dots, at most 13), lower-cased, final dot off."""
    m = _WORD_BEFORE.search(text, max(0, pos - 14), pos)
    return m.group(1).lower().rstrip(".") if m else ""


def _inside_open_paren(text: str, pos: int) -> bool:
    window = text[max(0, pos - 200):pos]
    return window.rfind("(") > window.rfind(")")


def _clause_starts(text: str) -> list[int]:
    """Clause starts that could hold a marker: where a single letter, "Panel" or a position word
    begins (the other clause starts cannot, and skipping them keeps the scan cheap)."""
    starts = [0] if _CLAUSE_CANDIDATE.match(text) else []
    for m in _BOUNDARY_CANDIDATE.finditer(text):
        if text[m.start()] == "." and _word_before(text, m.start()) in _ABBREVIATIONS:
            continue
        starts.append(m.end())
    return starts


def _is_clause_start(text: str, pos: int) -> bool:
    if pos == 0:  # the text is stripped: nothing but a marker can start at 0
        return True
    m = _BOUNDARY_BEFORE.search(text, max(0, pos - 4), pos)
    return bool(m) and not (text[m.start()] == "." and _word_before(text, m.start()) in _ABBREVIATIONS)


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[m.start()] == "." and _word_before(text, m.start()) in _ABBREVIATIONS:
            continue
        if text[m.start()] == "." and m.start() > 0 and text[m.start() - 1].isdigit() and m.end() < len(text) \
                and text[m.end()].isdigit():
            continue
        spans.append((start, m.end()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _find_markers(text: str) -> list[_Marker]:
    found: dict[tuple[int, str], _Marker] = {}
    n = len(text)

    def add(marker: _Marker) -> None:
        found.setdefault((marker.start, marker.kind), marker)

    # (A), (B-D), (i), (left panel)
    for m in _PAREN.finditer(text):
        s, e = m.span()
        if s > 0 and text[s - 1].isascii() and text[s - 1].isalnum():
            continue  # Ca(II), f(x)
        if e < n and ((text[e].isascii() and text[e].isalnum()) or text[e] in _DASHES):
            continue  # (R)-enantiomer
        inner = m.group(1).strip()
        panel_word = _PANEL_WORD.match(inner)
        if panel_word:
            inner = inner[panel_word.end():]  # (panel A), (panels B-D)
        raw = m.group(0)
        letters = _letter_markers_in(inner)
        if letters is not None:
            if _word_before(text, s) in _UNIT_WORDS:
                continue
            labels, ords = letters
            add(_Marker(s, e, labels, ords, "letter", "paren", _case(labels) or "-", raw))
        romans = _roman_markers_in(inner)
        if romans is not None:
            add(_Marker(s, e, romans[0], romans[1], "roman", "paren", "-", raw))
        if letters is None and romans is None:
            kw = _KW_LIST.fullmatch(inner)
            if kw:
                labels = _keyword_labels(kw.group("list"))
                add(_Marker(s, e, labels, [(0, 0)] * len(labels), "keyword", "paren", "-", raw))
    # A) B) ... anywhere after a space, unless inside an open parenthesis
    for m in _CLOSE_ONLY.finditer(text):
        if _inside_open_paren(text, m.start()):
            continue
        lab = m.group(1)
        add(_Marker(m.start(), m.end(), [lab], [_letter_ord(lab)], "letter", "paren", _case([lab]) or "-", m.group(0)))
    # A, / A: / A. / A-C, / A and B show ... / Left: / Upper panel shows ... at clause starts
    for p in _clause_starts(text):
        marker = _clause_letter_marker(text, p)
        if marker is not None:
            add(marker)
            continue
        kw = _KW_LIST.match(text, p)
        if kw:
            q = kw.end()
            d = _KW_DELIM.match(text, q)
            end = d.end() if d else None
            if end is None and q < n and text[q] == " ":
                nxt = _NEXT_WORD.match(text, q)
                words = kw.group("list").lower()
                if kw.group("panel") or (words.startswith("inset") and nxt and nxt.group(1).lower() in _KW_VERBS):
                    end = q + 1
            if end is not None:
                labels = _keyword_labels(kw.group("list"))
                add(_Marker(p, end, labels, [(0, 0)] * len(labels), "keyword", "clause", "-", text[p:end].strip()))
    return sorted(found.values(), key=lambda mk: mk.start)


def _clause_letter_marker(text: str, p: int) -> Optional[_Marker]:
    """A letter marker at clause start ``p`` (``A,``, ``B-D:``, ``A and B show``), or None.

    The longest label list followed by a delimiter wins: in ``A-C, H&E;`` the list ``A-C, H``
    has none after it, ``A-C`` has.
    """
    n = len(text)
    panel_word = _PANEL_WORD.match(text, p)
    start = p
    if panel_word:
        p = panel_word.end()
    parsed = _parse_list(text, p, n)
    if parsed is None:
        return None
    items, ends = parsed
    for count in range(len(items), 0, -1):
        expanded = _expand(items[:count])
        if expanded is None:
            continue
        labels, ords = expanded
        q = ends[count - 1]
        d = _DELIM.match(text, q)
        weak = False
        end = None
        if d:
            end = d.end()
            if d.group(0).startswith(".") and count == 1:
                nxt = _NEXT_WORD.match(text, end)
                if nxt and nxt.group(1).lower() in _EPITHETS:
                    continue  # E. coli
                if nxt and nxt.group(1)[0].islower() and labels[0][0].isupper():
                    weak = True
        elif (panel_word or (count >= 2 and count == len(items) and _tight(ords))) and q + 1 < n \
                and text[q] == " " and text[q + 1].islower() and not _NOT_PREDICATE.match(text, q + 1):
            end = q + 1  # "A and B show ...", "Panel A shows ..."
        if end is not None:
            return _Marker(start, end, labels, ords, "letter", "clause", _case(labels) or "-",
                           text[start:end].strip(), weak)
    return None


def _tight(ords: list[tuple[int, int]]) -> bool:
    """Labels without gaps wider than one letter (``A and B``, ``A, C``; not ``B, H``)."""
    return all(b[0] - a[0] <= 2 for a, b in zip(ords, ords[1:]))


def _chain(markers: list[_Marker], max_first: int = 3) -> list[_Marker]:
    """The plausible sequence of panel markers among the candidates (see the module docstring)."""
    chain: list[_Marker] = []
    covered: set[tuple[int, int]] = set()
    top = (0, 0)
    last_end = -1
    for mk in markers:
        if mk.start < last_end:
            continue  # overlaps the previous accepted marker
        first = mk.ords[0]
        if not chain:
            if first[0] > max_first:
                continue
        else:
            if mk.case != chain[0].case or first <= chain[-1].ords[0] or first in covered:
                continue
            if first[0] - top[0] > 2:
                continue
        chain.append(mk)
        covered.update(mk.ords)
        top = max(top, max(mk.ords))
        last_end = mk.end
    return chain


def _best_chain(markers: list[_Marker]) -> list[_Marker]:
    best: list[_Marker] = []
    for kind in ("letter", "roman"):
        for style in ("paren", "clause"):
            pool = [mk for mk in markers if mk.kind == kind and mk.style == style]
            if not pool:
                continue
            chain = _chain([mk for mk in pool if not mk.weak])
            if not chain:
                weak_chain = _chain([mk for mk in pool if mk.weak])
                chain = weak_chain if len(weak_chain) >= 2 else []
            if len(chain) == 1 and chain[0].ords[0][0] != 1:
                chain = []  # a lone "(b)" is a reference, not a panel
            if sum(len(mk.labels) for mk in chain) > sum(len(mk.labels) for mk in best):
                best = chain
    return best


# --------------------------------------------------------------------------------------------
# text pieces

_LEAD_JUNK = re.compile(rf"^[\s,;:.)\]\uff0c\uff1b\uff1a{_DASH}]+")
_LEAD_CONNECTOR = re.compile(r"^(?:(?:and|or|&|while|whereas|but|respectively|versus|vs\.?)\b[\s,;:]*)+",
                             re.IGNORECASE)
_ONLY_JUNK = re.compile(r"^[\W_]*(?:respectively)?[\W_]*$", re.IGNORECASE)


_TRAIL_CHARS = " ,;:\uff0c\uff1b\uff1a("
_TRAIL_WORDS = (" and", " or", " &")


def _strip_trailing(text: str) -> str:
    """Trailing separators and dangling conjunctions off (a loop, not a ``...+$`` regex: on a long
    run of separators that is not at the end, such a regex backtracks quadratically)."""
    while True:
        stripped = text.rstrip(_TRAIL_CHARS)
        for word in _TRAIL_WORDS:
            if stripped.endswith(word):
                stripped = stripped[:-len(word)]
                break
        if stripped == text:
            return text
        text = stripped


def _piece(text: str) -> str:
    return _strip_trailing(_LEAD_JUNK.sub("", text))


def _segment(text: str) -> str:
    text = _LEAD_CONNECTOR.sub("", _LEAD_JUNK.sub("", text))
    return _strip_trailing(_LEAD_JUNK.sub("", text))


_STAIN = (r"(?:H\s*&\s*E|H\s+and\s+E|HE|ha?ematoxylin(?:\s+and\s+|\s*&\s*|\s*[-\u2013/]\s*|\s+)eosin|"
          r"PAS|Giemsa|Masson(?:'s)?\s+trichrome|trichrome|reticulin|Gomori|Grocott|GMS|Congo\s+red|"
          r"toluidine\s+blue|elastic(?:\s+van\s+Gieson)?|EVG|alcian\s+blue|Perls|Prussian\s+blue|Papanicolaou|Pap|"
          r"Diff-Quik|Ziehl[-\u2013\s]Neelsen|Gram)")
_MAG = (r"(?:(?:original|final)\s+)?(?:magnifications?|mag\.?)?\s*[:,]?\s*"
        r"(?:[x\u00d7X]\s?\d+(?:\.\d+)?|\d+(?:\.\d+)?\s?[x\u00d7X])")
_SHARED_CLAUSE = re.compile(
    r"^(?:"
    r"(?:all\s+)?(?:scale\s+)?bars?\b"
    r"|(?:original\s+|final\s+)?magnifications?\b"
    r"|(?:original|objective)\s+[x\u00d7X]?\s?\d"
    rf"|{_MAG}\s*\.?$"
    rf"|{_STAIN}(?:[\s-]+(?:stain(?:ed|ing|s)?|sections?))?(?:\s*[,;]?\s*{_MAG})?\s*\.?$"
    r"|all\s+(?:panels|images|micrographs|photomicrographs|sections|figures|photographs)\b"
    r"|(?:photo)?micrographs\s+(?:were|are)\s+(?:taken|captured|acquired)\b"
    r"|images\s+(?:were|are)\s+(?:taken|captured|acquired)\b"
    r"|(?:data|values|results)\s+(?:are|were)\s+(?:shown|presented|expressed|given)\s+as\b"
    r"|error\s+bars\b"
    r"|\*+\s*,?\s*p\s*[<>=\u2264\u2265]"
    r"|abbreviations?\s*:"
    r")",
    re.IGNORECASE,
)
# shared clauses after which everything is shared ("Original magnifications: A, x40; B, x400.")
_STRONG_SHARED_CLAUSE = re.compile(
    r"^(?:(?:all\s+)?scale\s+bars?\b|bars?\s*[=:,]|(?:original|final)\s+magnifications?\b"
    r"|magnifications?\s*[:,=]|all\s+(?:panels|images|micrographs|photomicrographs|sections)\b"
    r"|abbreviations?\s*:|(?:data|values|results)\s+(?:are|were)\s+(?:shown|presented|expressed|given)\s+as\b)",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(r"[.;](?:[\"'\u201d\u2019)\]])?\s+|[\u3002\uff1b]\s*")


def _take_suffix(text: str) -> tuple[str, str]:
    """Split trailing shared clauses off the last panel's text: ``(own, shared_suffix)``."""
    cuts = [0]
    for m in _CLAUSE_BREAK.finditer(text):
        if text[m.start()] == "." and _word_before(text, m.start()) in _ABBREVIATIONS:
            continue
        if text[m.start()] == "." and m.start() > 0 and text[m.start() - 1].isdigit() and m.end() < len(text) \
                and text[m.end()].isdigit():
            continue
        if m.end() < len(text):
            cuts.append(m.end())
    cut = None
    for start in cuts[1:]:  # the first clause always stays with the panel
        if _STRONG_SHARED_CLAUSE.match(text[start:]):
            return text[:start], text[start:]
    for start in reversed(cuts[1:]):
        end = cut if cut is not None else len(text)
        if _SHARED_CLAUSE.match(text[start:end].strip()):
            cut = start
        else:
            break
    if cut is None:
        return text, ""
    return text[:cut], text[cut:]


# --------------------------------------------------------------------------------------------
# splitting


def split_caption(text: Optional[str], distribute: bool = False) -> SplitResult:
    """Split a compound caption into per-panel sub-captions (see the module docstring).

    Args:
        text: the caption; whitespace is normalised and a leading figure number removed.
        distribute: copy the shared prefix and suffix into every sub-caption, so that each reads
            as a full caption of its panel.

    Returns:
        The :class:`SplitResult`; one panel labelled None when the caption has no markers, none
        when it is empty.
    """
    text = clean_text(text or "")
    figure_label, text, _ = split_caption_label(text)
    if not text:
        return SplitResult("", "", [], (), figure_label, distribute)
    markers = _find_markers(text)
    chain = _best_chain(markers)
    if not chain:
        chain = [mk for mk in markers if mk.kind == "keyword"]
        kinds = {lab for mk in chain for lab in mk.labels}
        if len(chain) < 2 and "inset" not in kinds:
            chain = []
        # drop overlaps
        kept: list[_Marker] = []
        for mk in chain:
            if not kept or mk.start >= kept[-1].end:
                kept.append(mk)
        chain = kept
    if not chain:
        result = SplitResult("", "", [Panel(None, text)], (), figure_label)
        return result.distribute() if distribute else result

    if _prefix_style(text, chain):
        prefix, texts, suffix = _split_preceding(text, chain)
    else:
        prefix, texts, suffix = _split_following(text, chain)

    inset_only = all(lab == "inset" for mk in chain for lab in mk.labels)
    panels = _collect(chain, texts, ordered=chain[0].kind != "keyword")
    if inset_only and prefix:
        panels.insert(0, Panel(None, prefix))  # the main image beside its inset
        prefix = ""
    result = SplitResult(prefix, suffix, panels, tuple(mk.raw.strip() for mk in chain), figure_label)
    return result.distribute() if distribute else result


def _prefix_style(text: str, chain: list[_Marker]) -> bool:
    """Do the markers precede their text (True) or follow it? A vote over the markers.

    A marker at a clause start, or followed by a capitalised word, votes "precedes"; one followed
    by punctuation, the end or a conjunction votes "follows". One followed by a lower-case word
    (``(a) low power (b) high power``, ``p53 (A) shows ...``) goes with the first marker: preceding
    when that one starts a clause.
    """
    before = after = neutral = 0
    for mk in chain:
        if mk.style == "clause" or _is_clause_start(text, mk.start):
            before += 2 if mk is chain[0] else 1
            continue
        rest = text[mk.end:mk.end + 16].lstrip()
        nxt = _NEXT_WORD.match(rest)
        if not rest or rest[0] in ".,;:)]\u3002\uff0c\uff1b" or (
                nxt and nxt.group(1).lower() in ("and", "or", "while", "whereas", "respectively", "versus", "vs")):
            after += 1
        elif nxt and nxt.group(1)[0].islower():
            neutral += 1
        else:
            before += 1
    first = chain[0]
    if first.style == "clause" or _is_clause_start(text, first.start):
        before += neutral
    else:
        after += neutral
    return before >= after


def _split_preceding(text: str, chain: list[_Marker]) -> tuple[str, list[str], str]:
    prefix = text[:chain[0].start].strip()
    prefix = re.sub(r"[\s,;]+$", "", prefix)
    texts = []
    for i, mk in enumerate(chain):
        end = chain[i + 1].start if i + 1 < len(chain) else len(text)
        texts.append(text[mk.end:end])
    own, suffix = _take_suffix(texts[-1])
    texts[-1] = own
    texts = [_piece(t) for t in texts]
    for i in range(len(texts) - 2, -1, -1):  # "(A) and (B) low power": A shares B's text
        if not texts[i] or _ONLY_JUNK.match(_LEAD_CONNECTOR.sub("", texts[i])):
            texts[i] = texts[i + 1]
    return prefix, texts, suffix.strip()


_CONNECTOR = re.compile(r"(?:[,;]\s*(?:(?:and|or|but|whereas|while)\s+)?|\s(?:and|or|but|whereas|while)\s+)",
                        re.IGNORECASE)


def _split_following(text: str, chain: list[_Marker]) -> tuple[str, list[str], str]:
    sentences = _sentence_spans(text)
    index = 0
    sentence_of = []
    for mk in chain:
        while not (sentences[index][0] <= mk.start < sentences[index][1]):
            index += 1
        sentence_of.append(index)
    prefix = text[:sentences[sentence_of[0]][0]].strip()
    texts = [""] * len(chain)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(sentence_of):
        groups.setdefault(s, []).append(i)
    order = sorted(groups)
    for g, s in enumerate(order):
        members = groups[s]
        s_start, s_end = sentences[s]
        # "X (A) verb, whereas Y (B) verb." - between two markers, the text up to the last
        # connector is the first one's predicate, the rest the next one's subject
        subject = _segment(text[s_start:chain[members[0]].start])
        predicates = False
        for i, j in zip(members, members[1:]):
            gap = text[chain[i].end:chain[j].start]
            connectors = list(_CONNECTOR.finditer(gap))
            connector = connectors[-1] if connectors else None
            if connector is None:
                texts[i] = subject
                subject = _segment(gap)
                continue
            predicate = _segment(gap[:connector.start()])
            predicates = predicates or bool(predicate)
            texts[i] = _join(subject, predicate)
            subject = _segment(gap[connector.end():])
        last = members[-1]
        texts[last] = subject
        tail = text[chain[last].end:s_end].strip()
        if tail and not _ONLY_JUNK.match(tail):
            tail = _LEAD_CONNECTOR.sub("", _LEAD_JUNK.sub("", tail)).strip()
            tail = re.sub(r"^(?:respectively)\b\W*", "", tail, flags=re.IGNORECASE)
            if tail and not _ONLY_JUNK.match(tail):
                # a shared predicate ("H&E (A) and CD20 (B) of a lymphoma."), unless each marker
                # had its own ("p53 (A) is diffuse, whereas p16 (B) is patchy.")
                for i in ([last] if predicates else members):
                    texts[i] = _join(texts[i], tail)
        # sentences without markers up to the next marker sentence describe this sentence's panels
        nxt = sentences[order[g + 1]][0] if g + 1 < len(order) else None
        if nxt is not None and s_end < nxt:
            between = text[s_end:nxt].strip()
            for i in members:
                texts[i] = _join(texts[i], between)
    for i in range(len(texts) - 2, -1, -1):
        if not texts[i]:
            texts[i] = texts[i + 1]
    suffix = text[sentences[order[-1]][1]:].strip()
    return prefix, texts, suffix


def _collect(chain: list[_Marker], texts: list[str], ordered: bool) -> list[Panel]:
    by_label: dict[str, list[str]] = {}
    rank: dict[str, tuple] = {}
    for position, (mk, sub) in enumerate(zip(chain, texts)):
        for lab, o in zip(mk.labels, mk.ords):
            parts = by_label.setdefault(lab, [])
            if sub and sub not in parts:
                parts.append(sub)
            rank.setdefault(lab, o if ordered else (position, len(rank)))
    labels = sorted(by_label, key=lambda lab: rank[lab])
    return [Panel(lab, " ".join(by_label[lab])) for lab in labels]


# --------------------------------------------------------------------------------------------
# refining

#: what refining may write that was not in the input: (pattern, replacement, note)
NORMALISATION_TABLE: tuple[tuple[str, str, str], ...] = (
    ("haematoxylin and eosin, hematoxylin & eosin, hematoxylin-eosin, H and E, H & E, H+E, H/E, H-E, "
     "HE stain(ed|ing), (HE), HE ×400", "H&E", "stain name; a trailing '(H&E)' or '(HE)' is dropped"),
    ("periodic acid-Schiff, periodic acid Schiff", "PAS", "stain name; a trailing '(PAS)' is dropped"),
    ("x400, X 400, × 400, 400x, 400X, 400 ×", "×400",
     "magnification; postfix forms only before punctuation, the end, or magnification/objective/oil/lens/"
     "power/field/view/zoom ('2x higher' is left alone), never between numbers ('2 x 3 cm')"),
    ("40X objective, 40x oil", "×40 objective, ×40 oil", "objective magnification, same rule"),
)
#: the words refining may introduce (everything else it returns was in its input)
NORMALISATION_OUTPUTS = frozenset({"H&E", "PAS", "×"})

_BOILERPLATE = re.compile(
    r"^(?:"
    r"see\s+(?:also\s+)?(?:the\s+)?(?:main\s+)?(?:text|methods|supplementary|legend|table|fig)"
    r"|for\s+interpretation\s+of\s+the\s+references?\s+to\s+colou?r"
    r"|(?:this\s+)?(?:figure\s+)?(?:is\s+)?(?:also\s+)?(?:available|shown|reproduced)\s+in\s+colou?r"
    r"|colou?r\s+(?:figure|version|online|image)"
    r"|a\s+(?:high[-\s]resolution|colou?r)\s+version"
    r"|(?:reproduced|adapted|modified|reprinted)\s+(?:with\s+permission\s+)?(?:from|after|under)\b"
    r"|(?:image|figure|photo(?:graph)?s?)\s+(?:reproduced|adapted|courtesy)\b"
    r"|courtesy\s+of\b"
    r"|(?:copyright|\u00a9)"
    r"|please\s+see\b"
    r")",
    re.IGNORECASE,
)
# Each pattern below starts with a literal character where it can ("(", "["), so that the regex
# engine jumps from one candidate to the next instead of trying every position; the whitespace a
# removal leaves is tidied up at the end.
_PAREN_BOILERPLATE = re.compile(
    r"[(\[]\s*(?:colou?r\s+(?:figure\s+)?online|colou?r\s+online|colou?r\s+figure\s+can\s+be\s+viewed[^)\]]{0,120}"
    r"|see\s+(?:the\s+)?(?:main\s+)?text(?:\s+for\s+(?:more\s+|further\s+)?details?)?"
    r"|(?:reproduced|adapted|modified|reprinted)\s+(?:with\s+permission\s+)?from[^()\[\]]{0,200}"
    r"|courtesy\s+of[^()\[\]]{0,120})\s*[)\]]",
    re.IGNORECASE,
)
_BRACKET_REF = re.compile(rf"\[\s*\d{{1,4}}(?:\s*[,{_DASH}]\s*\d{{1,4}}){{0,20}}\s*\]")
_SUPERSCRIPTS = "\u00b9\u00b2\u00b3\u2070\u2074\u2075\u2076\u2077\u2078\u2079"
_SUPERSCRIPT_REF = re.compile(
    "(?:(?<=[A-Za-z]{3})|(?<=[.,;)]))[\u00b9\u00b2\u00b3\u2070\u2074-\u2079]+"
    "(?:[,\u2013\u207b-][\u00b9\u00b2\u00b3\u2070\u2074-\u2079]+){0,10}")
_AUTHOR = r"[A-Z][\w'\u2019-]+(?:\s+(?:et\s+al\.?|(?:and|&)\s+[A-Z][\w'\u2019-]+))?"
_CITE = rf"{_AUTHOR},?\s+(?:19|20)\d{{2}}[a-z]?"
# in parentheses: author-year citations, "(ref. 4)", cross-references to other figures and tables
_PAREN_REFS = re.compile(
    rf"\(\s*(?:"
    rf"(?:(?i:e\.g\.,?\s*|see\s+(?:also\s+)?|cf\.?\s*))?{_CITE}(?:\s*[;,]\s*{_CITE}){{0,10}}"
    rf"|(?i:refs?\.?|references?)\s*\d{{1,4}}(?:\s*[,{_DASH}]\s*\d{{1,4}}){{0,20}}"
    r"|(?i:(?:see\s+(?:also\s+)?|cf\.?\s*|compare\s+(?:with\s+)?)?(?:supplementary\s+|suppl\.?\s+)?"
    r"(?:fig(?:ure)?s?\.?|tables?)\s*S?\d{1,3}[A-Za-z]?(?:\s*[,\u2013-]\s*S?\d{0,3}[A-Za-z]?){0,6})"
    r")\s*\)"
)
_HE = re.compile(
    r"\b(?i:ha?ematoxylin(?:\s+and\s+|\s*&\s*|\s*\+\s*|\s*[-\u2013/]\s*|\s+)eosin)"
    r"(?:\s*\(\s*(?:H\s*&\s*E|H\s+and\s+E|HE|H\s*-\s*E)\s*\))?"
    r"|\bH\s*(?:and|&|\+|/)\s*E\b"
    r"|\bH-E\b"
    r"|\bHE(?=[\s-]*(?:stain|staining|stained|sections?)\b)"
    r"|(?<=\()HE(?=\s*[),;])"
    r"|\bHE(?=\s*[,;]?\s*(?:(?:original\s+)?magnification\s*)?[x\u00d7X]\s?\d)"
    r"|\bHE(?=\s*[,;]?\s*\d+\s?[x\u00d7X]\b)"
)
_PAS_PATTERN = re.compile(r"\bperiodic\s+acid[\s\u2013-]*Schiff(?:\s*\(\s*PAS\s*\))?", re.IGNORECASE)
_HE_TWICE = re.compile(r"H&E\s*\(\s*H&E\s*\)")
# x400 / X 400 / 400x / 40X objective; group 1: prefix form, group 2: postfix form
_MAG = re.compile(
    r"(?<![\w.])(?<!\d\s)[xX\u00d7]\s?(\d{1,4}(?:\.\d{1,2})?)(?![\d\w]|\.\d|\s*[xX\u00d7]\s*\d)"
    r"|(?<![\w.])(?<![xX\u00d7]\s)(\d{1,4}(?:\.\d{1,2})?)\s?[xX\u00d7](?![\w\u00d7])(?!\s*\d)"
    r"(?=\s*(?:[).,;:\]]|$|(?i:(?:original\s+)?(?:magnification|objective|oil|lens|mag\b|field|power|view|zoom))))"
)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:)\]])")
_EMPTY_BRACKETS = re.compile(r"[(\[]\s*[,;:]?\s*[)\]]")
_DOUBLE_PUNCT = re.compile(r"([,;:])\s*([.,;:])|\.\s*\.(?!\.)")
_OPEN_JUNK = re.compile(r"([(\[])\s*[,;:]\s*")
_CLOSE_JUNK = re.compile(r"[,;:]\s*(?=[)\]])")


def _double_punct(m: re.Match) -> str:
    if m.group(0).startswith(".") or m.group(2) == ".":
        return "."
    return m.group(2) if m.group(2) in ";:" else m.group(1)


def refine_caption(text: Optional[str]) -> str:
    """A caption with non-descriptive parts removed and stains and magnifications normalised.

    Removes the leading figure number, reference markers (``[12]``, ``[3, 5-7]``, superscript
    numbers, ``(ref. 4)``), author-year citations (``(Smith et al., 2019)``), cross-references to
    other figures and tables (``(Fig. 2B)``, ``(see Table 1)``) and boilerplate sentences and
    parentheticals (see the module docstring). Normalises through :data:`NORMALISATION_TABLE`.
    Panel markers stay. Never adds a fact: every word of the output is a word of the input or one
    of :data:`NORMALISATION_OUTPUTS`.

    Returns:
        The refined caption; empty when nothing descriptive is left.
    """
    text = clean_text(text or "")
    _, text, _ = split_caption_label(text)
    if not text:
        return ""
    # each rule runs only when the text holds what it looks for (a substring test is C-speed)
    brackets = "(" in text or "[" in text
    if brackets:
        text = _PAREN_BOILERPLATE.sub("", text)
    kept = []
    for start, end in _sentence_spans(text):
        sentence = text[start:end].strip()
        if sentence and not _BOILERPLATE.match(sentence):
            kept.append(sentence)
    text = " ".join(kept)
    if "[" in text:
        text = _BRACKET_REF.sub("", text)
    if "(" in text:
        text = _PAREN_REFS.sub("", text)
    if any(ch in text for ch in _SUPERSCRIPTS):
        text = _SUPERSCRIPT_REF.sub("", text)
    if "E" in text or "eosin" in text:
        text = _HE.sub("H&E", text)
        if "H&E" in text:
            text = _HE_TWICE.sub("H&E", text)
    if "chiff" in text or "CHIFF" in text:
        text = _PAS_PATTERN.sub("PAS", text)
    text = _MAG.sub(lambda m: "\u00d7" + (m.group(1) or m.group(2)), text)
    return _tidy(text, brackets)


def _tidy(text: str, brackets: bool = True) -> str:
    if brackets:
        text = _EMPTY_BRACKETS.sub("", text)
        text = _OPEN_JUNK.sub(r"\1", text)
        text = _CLOSE_JUNK.sub("", text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _DOUBLE_PUNCT.sub(_double_punct, text)
    return text.strip().lstrip(" ,;:.")


def refine_split(split: SplitResult) -> SplitResult:
    """A split with every part refined (panels whose sub-caption refines to nothing keep '')."""
    return dataclasses.replace(
        split,
        shared_prefix=refine_caption(split.shared_prefix),
        shared_suffix=refine_caption(split.shared_suffix),
        panels=[Panel(p.label, refine_caption(p.subcaption)) for p in split.panels],
    )


def words(text: str) -> list[str]:
    """The words of a text as the faithfulness check compares them: case-folded runs of letters and
    runs of digits (``x400`` is ``x`` and ``400``, so that ``×400`` is supported by it)."""
    return re.findall(r"[^\W\d_]+|\d+", text.casefold())


def unsupported_words(output: str, source: str, allowed: Iterable[str] = NORMALISATION_OUTPUTS) -> list[str]:
    """Words of ``output`` that are neither in ``source`` nor among ``allowed``: what a rewrite added."""
    known = set(words(source))
    for item in allowed:
        known.update(words(item))
    return [w for w in words(output) if w not in known]
