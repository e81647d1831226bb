"""Record contracts: one definition per dataset kind, and a validator that names record and field."""

import io

import pytest
from PIL import Image

from pathasst.errors import RecordError
from pathasst.records import get_spec, pathcap_group, record_errors, specs


def tiny_png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(buf, "PNG")
    return buf.getvalue()


def pathcap(**changes):
    rec = {"id": "PMC1/F1/A", "image": tiny_png(), "caption": "H&E, x40.", "caption_raw": "(A) H&E, x40.",
           "source": "pubmed", "source_id": "PMC1", "figure_id": "PMC1/F1", "subfigure_label": "A",
           "bbox": [0.0, 0.0, 4.0, 4.0], "page": None, "license": "CC BY 4.0", "pathology_score": 0.97,
           "width": 4, "height": 4, "phash": "ffd8"}
    rec.update(changes)
    return rec


def test_all_contracts_exist_with_their_keys():
    assert set(specs()) == {"pathcap", "pathsubfig", "pathinstruct", "results"}
    assert list(get_spec("pathcap").features)[:3] == ["id", "image", "caption"]
    with pytest.raises(RecordError, match="unknown dataset kind 'capz'"):
        get_spec("capz")


def test_valid_records_pass():
    get_spec("pathcap").validate(pathcap())
    get_spec("pathsubfig").validate({
        "image_id": "synth-1", "image": tiny_png(), "width": 4, "height": 4, "origin": "synthetic",
        "objects": [{"bbox": [0, 0, 2, 2], "category": "subfigure"}, {"bbox": [0, 0, 1, 1], "category": "panel_label"}]})
    get_spec("pathinstruct").validate({
        "id": "i1", "image": tiny_png(), "task_type": "tool", "figure_id": "PMC1/F1", "generator": "gpt-4o@v1",
        "tools": ['{"name": "ihc_quantify"}'],
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Ki-67 index?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "About 30%."}]}]})


@pytest.mark.parametrize("changes, message", [
    ({"source": "arxiv"}, "field 'source': 'arxiv' is not one of pubmed, book, web, private"),
    ({"width": "4"}, "field 'width': expected an integer, got str"),
    ({"bbox": [1.0, 2.0]}, "field 'bbox': expected 4 values, got 2"),
    ({"caption": None}, "field 'caption': is None but may not be null"),
    ({"image": "/no/such/file.png"}, "field 'image': image file not found"),
    ({"extra": 1}, "unknown field(s) 'extra'"),
    ({"pathology_score": True}, "field 'pathology_score': expected float32, got bool"),
])
def test_validator_names_record_and_field(changes, message):
    with pytest.raises(RecordError) as err:
        get_spec("pathcap").validate(pathcap(**changes))
    assert "pathcap record 'PMC1/F1/A'" in str(err.value)
    assert message in str(err.value)


def test_nested_fields_are_checked():
    spec = get_spec("pathsubfig")
    rec = {"image_id": "a", "image": tiny_png(), "width": 4, "height": 4, "origin": "annotated",
           "objects": [{"bbox": [0, 0, 1], "category": "panel"}]}
    errors = record_errors(spec, rec)
    assert "field 'objects.bbox': expected 4 values, got 3" in errors
    assert any("'objects.category'" in e and "panel" in e for e in errors)
    bad_role = {"id": "i", "image": None, "task_type": "description", "figure_id": None, "generator": "g",
                "tools": [], "messages": [{"role": "robot", "content": [{"type": "text", "text": "hi"}]}]}
    assert any("messages.role" in e for e in record_errors(get_spec("pathinstruct"), bad_role))


def test_split_groups_are_the_article_book_site_collection():
    assert pathcap_group(pathcap()) == "pubmed:PMC1"
    assert pathcap_group(pathcap(source="book", source_id="abc123#p12")) == "book:abc123"
    assert pathcap_group(pathcap(source="web", source_id="https://www.pathpedia.example/a/b")) == "web:www.pathpedia.example"
    assert pathcap_group(pathcap(source="private", source_id="lab-a/slide-7")) == "private:lab-a"
