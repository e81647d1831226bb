"""Quality gates of generated samples: JSON schema, grounding in the caption, near-identical questions.

* :func:`parse_output` reads a model's answer as one JSON object (a ```json fence is tolerated) and
  checks it against the template's ``output_schema`` with ``jsonschema``; it says what is wrong in a
  sentence that the repair request quotes back to the model.
* :class:`Grounding` drops samples that name a diagnosis, grade, stain or marker, or state a
  measurement, that the caption does not support (vocabulary: ``templates/grounding.json``). Text is
  compared after the stain and magnification normalisation of ``curate refine``
  (:func:`~pathasst.dataset_builders.curate.captions.refine_caption`), so "H and E" in a caption
  supports "H&E" in an answer. The filter is deliberately strict: a negated mention ("no
  necrosis") of something the caption never names is dropped too, because the image may well show
  necrosis, and the model cannot know.
* :class:`QuestionDedup` finds near-identical questions about the same image with the standard
  library's ``difflib.SequenceMatcher`` on normalised text: the sets compared are a handful of
  questions per image, where an exact ratio costs microseconds and no index library pays off.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

GROUNDING_FILE = Path(__file__).with_name("templates") / "grounding.json"

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class OutputInvalid(ValueError):
    """A model answer that is not valid for its template; ``str()`` is what the repair request quotes."""


def parse_output(text: str | None, schema: Mapping[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    """The model's answer as a dict valid against ``schema``.

    Raises:
        OutputInvalid: truncated at the token limit, not JSON, not an object, or off the schema.
    """
    from pathasst.tools.registry import _validator

    if finish_reason == "length":
        raise OutputInvalid("the answer was cut off at the token limit (finish_reason 'length'); answer more briefly")
    if not text or not text.strip():
        raise OutputInvalid("the answer was empty")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise OutputInvalid(f"the answer is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise OutputInvalid(f"the answer must be a JSON object, not {type(data).__name__}")
    errors = sorted(_validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "the object"
        raise OutputInvalid(f"the JSON does not match the required schema at {where}: {error.message[:200]}")
    return data


# --- grounding --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    kind: str  # diagnosis | grade | stain | measurement
    text: str

    def __str__(self) -> str:
        return f"{self.kind} '{self.text}'"


@functools.lru_cache(maxsize=4096)
def _normalise(text: str) -> str:
    from pathasst.dataset_builders.curate.captions import refine_caption

    # refine_caption normalises stains and magnifications (and drops citations and figure numbers,
    # which carry no claim); casefold + single spaces make matching robust to case and layout.
    # Cached: the caption of a record is the support of each of its samples.
    return " ".join(refine_caption(text).replace("μ", "µ").casefold().split())


def _term_pattern(spelling: str) -> str:
    return re.escape(spelling.casefold()).replace(r"\ ", r"[\s-]+")


class Grounding:
    """The grounding filter (see the module docstring).

    Args:
        vocabulary: the parsed ``grounding.json``; default: the packaged file.
    """

    def __init__(self, vocabulary: Mapping[str, Any] | None = None):
        vocab = vocabulary or json.loads(GROUNDING_FILE.read_text())
        self.version = str(vocab.get("version", "?"))
        # One alternation of every spelling, longest first: scanning left to right, the regex engine
        # takes the first alternative that matches at a position, so "squamous cell carcinoma" is
        # one claim and its "carcinoma" is not judged again. Each spelling maps to its term: the
        # kind, and a pattern of all its spellings that the support text is searched with.
        self._term_of: dict[str, tuple[str, re.Pattern]] = {}
        spellings = []
        for kind, key in (("diagnosis", "diagnoses"), ("stain", "stains")):
            for group in vocab.get(key, []):
                group = [group] if isinstance(group, str) else list(group)
                any_spelling = re.compile(r"(?<![\w&])(?:" + "|".join(
                    _term_pattern(s) for s in sorted(group, key=len, reverse=True)) + r")(?![\w&])")
                for spelling in group:
                    self._term_of[_squash(spelling)] = (kind, any_spelling)
                    spellings.append(spelling)
        spellings.sort(key=len, reverse=True)
        self._terms = re.compile(r"(?<![\w&])(?:" + "|".join(_term_pattern(s) for s in spellings) + r")(?![\w&])")
        self._patterns = [("grade", re.compile(p, re.IGNORECASE)) for p in vocab.get("grades", [])]
        self._patterns += [("stain", re.compile(p, re.IGNORECASE)) for p in vocab.get("stain_patterns", [])]
        self._measurement = re.compile(vocab["measurement"], re.IGNORECASE) if vocab.get("measurement") else None

    def unsupported(self, text: str, support: str, numbers: Iterable[str] = ()) -> list[Claim]:
        """Claims in ``text`` that ``support`` (the caption, plus a tool result) does not back.

        Args:
            text: the generated text (questions and answers).
            support: the text that may back it.
            numbers: extra numbers that back measurements (a tool result's values as percentages).
        """
        sample = _normalise(text)
        source = _normalise(support)
        claims: list[Claim] = []
        for found in self._terms.finditer(sample):
            kind, any_spelling = self._term_of[_squash(found.group(0))]
            if not any_spelling.search(source):
                claims.append(Claim(kind, found.group(0)))
        for kind, pattern in self._patterns:
            for found in pattern.finditer(sample):
                if _squash(found.group(0)) not in _squash(source):
                    claims.append(Claim(kind, found.group(0)))
        if self._measurement is not None:
            allowed = {_num(n) for n in numbers}
            allowed.update(_num(n) for n in re.findall(r"\d+(?:[.,]\d+)?", source))
            for found in self._measurement.finditer(sample):
                value = re.search(r"\d+(?:[.,]\d+)?", found.group(0))
                if value and _num(value.group(0)) not in allowed:
                    claims.append(Claim("measurement", found.group(0).strip()))
        unique: dict[str, Claim] = {}
        for claim in claims:
            unique.setdefault(f"{claim.kind}:{claim.text}", claim)
        return list(unique.values())


def _squash(text: str) -> str:
    return re.sub(r"[\s-]+", "", text.casefold())


def _num(text: str) -> str:
    try:
        value = float(str(text).replace(",", "."))
    except ValueError:
        return str(text)
    return f"{value:g}"


def result_numbers(result: Any) -> set[str]:
    """Numbers a tool result backs, as an answer may quote them: 0.3412 -> 0.3412, 34, 34.1, 34.12."""
    out: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            out.add(f"{value:g}")
            if isinstance(value, float) and 0 <= value <= 1:
                for digits in (0, 1, 2):
                    out.add(f"{round(value * 100, digits):g}")
            for digits in (0, 1, 2, 3):
                out.add(f"{round(value, digits):g}")
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(result)
    return out


@functools.lru_cache(maxsize=1)
def default_grounding() -> Grounding:
    return Grounding()


# --- near-identical questions -----------------------------------------------------------------


def _question_key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


class QuestionDedup:
    """Questions seen for one image; :meth:`check` says which earlier one a new question repeats.

    Args:
        threshold: ``SequenceMatcher`` ratio on normalised text from which two questions are the same.
    """

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold
        self._seen: list[tuple[str, str]] = []  # (normalised question, where it was asked)

    def check(self, question: str) -> tuple[str, float] | None:
        """``(where, ratio)`` of the earlier near-identical question, or None."""
        key = _question_key(question)
        for seen, where in self._seen:
            if seen == key:
                return where, 1.0
            matcher = difflib.SequenceMatcher(None, seen, key, autojunk=False)
            if matcher.real_quick_ratio() >= self.threshold and matcher.quick_ratio() >= self.threshold:
                ratio = matcher.ratio()
                if ratio >= self.threshold:
                    return where, round(ratio, 3)
        return None

    def add(self, question: str, where: str) -> None:
        self._seen.append((_question_key(question), where))
