"""Shared extraction core: labels, text, licences, sharding, the bounded runner and its ledger."""

import json
import operator

import pytest

from pathasst.dataset_builders.extract.common import (
    ExtractConfig,
    Source,
    Unit,
    UnitResult,
    _bounded_map,
    clean_text,
    figure_record,
    in_shard,
    normalize_license,
    parse_paths_and_overrides,
    run_extract,
    split_caption_label,
)
from pathasst.errors import ConfigError
from pathasst.testing.images import make_image


@pytest.mark.parametrize("text, label, rest, continued", [
    ("Figure 2.5: Chronic gastritis.", "Figure 2.5", "Chronic gastritis.", False),
    ("Fig. 3. Tubular adenoma.", "Fig. 3", "Tubular adenoma.", False),
    ("FIGURE 12-4 Acute appendicitis.", "FIGURE 12-4", "Acute appendicitis.", False),
    ("Plate 7 Cirrhosis.", "Plate 7", "Cirrhosis.", False),
    ("Figure 3 (continued) Panels E-H.", "Figure 3", "Panels E-H.", True),
    ("Figs. 4a–c Serial sections.", "Figs. 4a–c", "Serial sections.", False),
    ("Fig. S2. Supplementary stains.", "Fig. S2", "Supplementary stains.", False),
    ("Figurative language is not a label.", None, "Figurative language is not a label.", False),
])
def test_caption_labels(text, label, rest, continued):
    assert split_caption_label(text) == (label, rest, continued)


def test_clean_text_expands_ligatures_and_joins_hyphenation():
    assert clean_text("Dense \ufb01brosis and carci-\n noma,\n  H&E") == "Dense fibrosis and carcinoma, H&E"


@pytest.mark.parametrize("text, url, name, nc", [
    (None, "http://creativecommons.org/licenses/by/4.0/", "CC BY 4.0", False),
    ("CC BY-NC-ND 4.0", None, "CC BY-NC-ND 4.0", True),
    ("This article is distributed under the Creative Commons Attribution-NonCommercial 3.0 licence", None,
     "CC BY-NC 3.0", True),
    (None, "https://creativecommons.org/publicdomain/zero/1.0/", "CC0 1.0", False),
    ("All rights reserved", None, "All rights reserved", None),
])
def test_licences_are_normalised_and_nc_flagged(text, url, name, nc):
    lic = normalize_license(text, url)
    assert (lic.name, lic.noncommercial) == (name, nc)
    if name.startswith("CC"):
        assert lic.url.startswith("https://creativecommons.org/")
    assert normalize_license(None, None) is None


def test_shards_are_disjoint_and_complete():
    keys = [f"pdf:{i}" for i in range(1000)]
    parts = [{k for k in keys if in_shard(k, (i, 4))} for i in range(4)]
    assert set().union(*parts) == set(keys) and sum(len(p) for p in parts) == 1000
    assert all(150 < len(p) < 350 for p in parts)
    with pytest.raises(ValueError, match="K/N"):
        ExtractConfig(shard="5/4")


def test_bounded_map_keeps_order_across_processes():
    items = list(range(-20, 20))
    assert [r for _, r in _bounded_map(operator.neg, iter(items), 2)] == [-i for i in items]


def test_paths_and_overrides_are_told_apart(tmp_path):
    (tmp_path / "a=b.pdf").write_bytes(b"")
    paths, overrides = parse_paths_and_overrides([str(tmp_path / "a=b.pdf"), "max_side=512", "x.pdf"])
    assert paths == [str(tmp_path / "a=b.pdf"), "x.pdf"] and overrides == ["max_side=512"]
    with pytest.raises(ConfigError, match="no input given"):
        parse_paths_and_overrides(["max_side=512"])


def test_figure_record_cleans_caption_and_keeps_provenance():
    cfg = ExtractConfig()
    rec = figure_record(image=make_image("CMYK", fmt="JPEG"), caption_raw="Figure 1.2: Granulomas with \ufb01brosis.",
                        source="book", source_id="abc#p3", figure_id="abc/p3/f0", license=normalize_license("CC BY 4.0"),
                        cfg=cfg, page=3, page_bbox=[10, 20, 100, 80], meta={"dpi": 200})
    assert rec["caption"] == "Granulomas with fibrosis." and rec["figure_label"] == "Figure 1.2"
    assert rec["caption_raw"] == "Figure 1.2: Granulomas with fibrosis."
    assert rec["license"] == "CC BY 4.0" and rec["noncommercial"] is False
    assert json.loads(rec["meta"]) == {"dpi": 200} and rec["page_bbox"] == [10.0, 20.0, 100.0, 80.0]
    from pathasst.records import get_spec

    get_spec("pathcap").validate(rec)
    with pytest.raises(ValueError, match="empty caption"):
        figure_record(image=make_image(), caption_raw="Figure 3.", source="book", source_id="a#p1",
                      figure_id="x", license=normalize_license("CC0"), cfg=cfg)


# a toy source: a unit is a list of (caption, image mode or None for "crash")
def _toy_units(paths, cfg):
    for i, spec in enumerate(json.loads(open(paths[0]).read())):
        yield Unit(key=f"toy:{i}", payload=spec, label=f"item {i}")


def _toy_extract(unit, cfg):
    result = UnitResult()
    for j, (caption, mode) in enumerate(unit.payload):
        if mode == "crash":
            raise RuntimeError("parser blew up")
        if mode == "truncated":
            from pathasst.testing.images import make_truncated_image

            image = make_truncated_image()
        else:
            image = make_image(mode, seed=j)
        try:
            result.records.append(figure_record(
                image=image, caption_raw=caption, source="private", source_id=f"toy/{unit.key}",
                figure_id=f"{unit.key}/f{j}", license=normalize_license("CC BY 4.0"), cfg=cfg))
        except Exception as exc:  # noqa: BLE001 - ledger it like a real source does
            result.reject(f"{unit.key}/f{j}", getattr(exc, "reason", str(exc)))
    return result


TOY = Source("toy", ExtractConfig, _toy_units, _toy_extract)


def test_run_extract_accounts_for_every_input_and_resumes(tmp_path):
    spec = [[["Fig. 1. Lymph node.", "RGB"], ["Fig. 2. Liver.", "L"]],
            [["Fig. 3. Broken.", "truncated"]],
            [["Fig. 4. Crash.", "crash"]],
            []]
    manifest = tmp_path / "inputs.json"
    manifest.write_text(json.dumps(spec))
    out = tmp_path / "out"
    summary = run_extract(TOY, ExtractConfig(), [str(manifest)], str(out), progress=False)
    ledger = {item["id"]: item["reason"] for item in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert summary.total_records == 2
    assert ledger["toy:1/f0"].startswith("truncated image")
    assert ledger["toy:2"].startswith("extractor error: RuntimeError: parser blew up")
    assert ledger["toy:3"] == "no figures: nothing to extract from item 3"
    again = run_extract(TOY, ExtractConfig(), [str(manifest)], str(out), progress=False)
    assert again.total_records == 2 and again.rejected == 3


def test_runtime_keys_do_not_guard_the_folder_but_output_keys_do(tmp_path):
    from pathasst.errors import OutputError

    manifest = tmp_path / "inputs.json"
    manifest.write_text(json.dumps([[["Fig. 1. Lymph node.", "RGB"]]]))
    out = tmp_path / "out"
    run_extract(TOY, ExtractConfig(), [str(manifest)], str(out), progress=False)
    again = run_extract(TOY, ExtractConfig(num_proc=2, max_shard_mb=100), [str(manifest)], str(out), progress=False)
    assert again.total_records == 1
    with pytest.raises(OutputError, match="different config"):
        run_extract(TOY, ExtractConfig(max_side=512), [str(manifest)], str(out), progress=False)


def test_missing_local_inputs_fail_before_the_output_folder_exists(tmp_path):
    from pathasst.errors import InputError

    with pytest.raises(InputError, match="not found"):
        run_extract(TOY, ExtractConfig(), [str(tmp_path / "nope.json")], str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()
