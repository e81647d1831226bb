"""The quality gates on their own: schema parsing, grounding vocabulary, question dedup, templates."""

from __future__ import annotations

import pytest

from pathasst.dataset_builders.generate.gates import Grounding, OutputInvalid, QuestionDedup, parse_output, result_numbers
from pathasst.dataset_builders.generate.templates import load_template

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "minLength": 3}}, "required": ["answer"]}
CAPTION = "Colonic adenocarcinoma with dirty necrosis (hematoxylin and eosin, x200). Scale bar 50 um."


def test_parse_output():
    assert parse_output('```json\n{"answer": "yes sir"}\n```', SCHEMA) == {"answer": "yes sir"}
    with pytest.raises(OutputInvalid, match="cut off at the token limit"):
        parse_output('{"answer": "yes sir"}', SCHEMA, "length")
    with pytest.raises(OutputInvalid, match="not valid JSON"):
        parse_output('{"answer": ', SCHEMA)
    with pytest.raises(OutputInvalid, match="must be a JSON object"):
        parse_output("[1]", SCHEMA)
    with pytest.raises(OutputInvalid, match="schema at answer"):
        parse_output('{"answer": "no"}', SCHEMA)


def test_grounding_supports_normalised_synonyms_and_rejects_additions():
    g = Grounding()
    assert g.unsupported("An H&E section at ×200 shows adenocarcinoma with necrotic debris; 50 µm bar.", CAPTION) == []
    claims = {(c.kind, c.text) for c in g.unsupported(
        "A poorly differentiated squamous cell carcinoma, Gleason 4+3, Ki-67 80%, CD20+, at ×400.", CAPTION)}
    assert claims == {("diagnosis", "squamous cell carcinoma"), ("grade", "poorly differentiated"),
                      ("grade", "gleason 4+3"), ("stain", "ki-67"), ("stain", "cd20"), ("measurement", "80%"),
                      ("measurement", "×400")}
    # spellings of one term support each other; numbers of a tool result back quoted percentages
    assert Grounding().unsupported("Leukemia infiltrates.", "Leukaemic... acute leukaemia in marrow.") == []
    assert g.unsupported("34.1% of the tissue is DAB-positive.", CAPTION, result_numbers({"f": 0.3412})) == []
    assert [c.text for c in g.unsupported("12% is positive", CAPTION, result_numbers({"f": 0.3412}))] == ["12%"]


def test_question_dedup():
    d = QuestionDedup(0.85)
    d.add("What stain was used for this section?", "s1")
    assert d.check("What stain was used for this section ?") == ("s1", 1.0)
    assert d.check("What stain was used for the section?")[0] == "s1"
    assert d.check("Which cells are positive?") is None


def test_templates_are_versioned_data():
    for name in ("description", "conversation", "reasoning", "tool_request", "tool_result", "tool_answer", "tool_none"):
        t = load_template(name)
        assert t.tag.startswith(f"{name}@{t.version}+")
        messages = t.messages({"task": name, "caption": "A {braced} caption $1", "tool_name": "ihc_quantify",
                               "tool_description": "d", "tool_parameters": {}, "fixed_arguments": {},
                               "arguments": {}, "result_schema": {}, "result": {}, "request": "r", "tool_names": "x"})
        assert messages[0]["role"] == "system" and "A {braced} caption $1" in messages[-1]["content"]
