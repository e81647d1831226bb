"""`pathasst extract private`: manifests (CSV, JSONL) and Labelme folders, required licence and
provenance, bad images and encodings in the ledger, and the CLI (resume, --num-proc, --shard)."""

import base64
import json

import pytest

from pathasst.dataset_builders.extract import private
from pathasst.dataset_builders.extract.private import PrivateConfig
from pathasst.testing.images import make_huge_image_header, make_image, make_truncated_image

CSV_HEADER = "id,image,caption,labels,license,provenance,stain\n"


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def extract(path, **overrides):
    cfg = PrivateConfig(**overrides)
    return {unit.key: private.extract_unit(unit, cfg) for unit in private.iter_units([str(path)], cfg)}


def records_of(results):
    return {r["id"]: r for res in results.values() for r in res.records}


def rejects_of(results):
    return {item: reason for res in results.values() for item, reason, _ in res.rejects}


def meta(record):
    return json.loads(record["meta"] or "{}")


def slides_manifest(folder):
    """A CSV collection: every image mode an archive holds, and every way a row goes wrong."""
    images = {
        "rgb.png": make_image("RGB", (96, 72), 1),
        "cmyk.jpg": make_image("CMYK", (96, 72), 2, fmt="JPEG"),
        "sixteen.png": make_image("I;16", (96, 72), 3),
        "palette.png": make_image("P", (96, 72), 4, transparent=True),
        "alpha.png": make_image("RGBA", (96, 72), 5),
        "cut.jpg": make_truncated_image(),
        "junk.png": b"this is not an image at all",
        "bomb.png": make_huge_image_header(),
    }
    for name, data in images.items():
        write(folder / "img" / name, data)
    rows = [
        "s1,img/rgb.png,Figure 1. Tubular adenoma with low-grade dysplasia.,adenoma;dysplasia,CC BY 4.0,Hospital A archive case 17,H&E",
        's2,img/cmyk.jpg,"Gastric signet-ring cells, PAS stain.",,CC BY-NC 4.0,Hospital A archive case 18,PAS',
        "s3,img/sixteen.png,Fluorescence micrograph of a renal glomerulus.,,CC0,scanner export 3,IF",
        "s4,img/palette.png,Schematic of a lymph node.,,CC BY 4.0,teaching set,",
        "s5,img/alpha.png,Cropped island of tumour cells.,,CC BY 4.0,teaching set,",
        "s6,img/absent.png,A missing file.,,CC BY 4.0,teaching set,",
        "s7,img/cut.jpg,A truncated JPEG.,,CC BY 4.0,teaching set,",
        "s8,img/junk.png,Not an image.,,CC BY 4.0,teaching set,",
        "s9,img/rgb.png,No licence given.,,,teaching set,",
        "s10,img/rgb.png,No provenance given.,,CC BY 4.0,,",
        "s11,img/rgb.png,,,CC BY 4.0,teaching set,",
        "s12,img/bomb.png,A decompression bomb.,,CC BY 4.0,teaching set,",
        "s1,img/rgb.png,The same id again.,,CC BY 4.0,teaching set,",
    ]
    return write(folder / "manifest.csv", CSV_HEADER + "\n".join(rows) + "\n")


def test_manifest_rows_become_records_or_ledger_lines(tmp_path):
    manifest = slides_manifest(tmp_path / "slides")
    results = extract(manifest)
    records, rejects = records_of(results), rejects_of(results)
    assert sorted(records) == ["slides/s1", "slides/s2", "slides/s3", "slides/s4", "slides/s5"]
    assert len(records) + len(rejects) == 13  # every row: a record or a ledger line
    kinds = {k: v.split(":")[0] for k, v in rejects.items()}
    assert kinds == {
        "private:slides/s6": "missing image file", "private:slides/s7": "truncated image",
        "private:slides/s8": "not an image", "private:slides/s9": "missing licence",
        "private:slides/s10": "missing provenance", "private:slides/s11": "missing caption",
        "private:slides/s12": "image too large", "private:slides/s1#row13": "duplicate id",
    }
    s1 = records["slides/s1"]
    assert (s1["source"], s1["source_id"], s1["figure_id"]) == ("private", "slides/s1", "slides/s1")
    assert s1["caption"] == "Tubular adenoma with low-grade dysplasia." and s1["figure_label"] == "Figure 1"
    assert meta(s1) == {"provenance": "Hospital A archive case 17", "manifest": "manifest.csv", "row": 1,
                        "image_path": "img/rgb.png", "labels": ["adenoma", "dysplasia"], "fields": {"stain": "H&E"}}
    assert (records["slides/s2"]["license"], records["slides/s2"]["noncommercial"]) == ("CC BY-NC 4.0", True)
    from pathasst.images import load_rgb

    for item in ("s2", "s3", "s4", "s5"):  # CMYK, 16-bit, palette+transparency, alpha: all RGB/L now
        img = load_rgb(records[f"slides/{item}"]["image"])
        assert img.size == (96, 72)
    # the transparent right edge of the RGBA image is white, not black
    assert load_rgb(records["slides/s5"]["image"]).getpixel((95, 36)) == (255, 255, 255)


def test_jsonl_manifest_with_collection_defaults(tmp_path):
    folder = tmp_path / "biopsies"
    write(folder / "collection.yaml", "name: Biopsy set 2024\nlicense: CC BY-SA 4.0\n"
                                      "provenance: Department of Pathology, teaching archive\n")
    write(folder / "a.png", make_image("RGB", (80, 80), 1))
    write(folder / "b.png", make_image("L", (80, 80), 2))
    lines = [
        {"image": "a.png", "caption": "Core biopsy of prostate, Gleason 3+4.", "labels": ["prostate", "gleason"]},
        {"file_name": "b.png", "text": "Liver biopsy, steatosis.", "license": "CC BY 4.0", "source_id": "case 9"},
        "[1, 2]",
    ]
    write(folder / "items.jsonl", "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n{broken\n")
    results = extract(folder)
    records, rejects = records_of(results), rejects_of(results)
    a, b = records["Biopsy-set-2024/items-row1"], records["Biopsy-set-2024/items-row2"]
    assert (a["license"], meta(a)["provenance"], meta(a)["collection_defaults"]) == (
        "CC BY-SA 4.0", "Department of Pathology, teaching archive", "collection.yaml")
    assert meta(a)["labels"] == ["prostate", "gleason"]
    assert (b["license"], meta(b)["provenance"]) == ("CC BY 4.0", "case 9")
    assert rejects["private:Biopsy-set-2024/items-row3"].startswith("invalid row: expected a JSON object")
    assert rejects["private:Biopsy-set-2024/items-row4"].startswith("invalid JSON")


def labelme(image_path, shapes=(), **extra):
    doc = {"version": "5.4.1", "flags": {}, "shapes": list(shapes), "imagePath": image_path, "imageData": None,
           "imageHeight": 60, "imageWidth": 90}
    doc.update(extra)
    return json.dumps(doc)


def shape(label, points, description=None):
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {},
            "description": description}


def labelme_folder(root):
    folder = root / "annotated"
    write(folder / "collection.yaml", "name: annotated-set\nlicense: CC BY 4.0\nprovenance: lab annotations v2\n")
    write(folder / "case1" / "a.png", make_image("RGB", (90, 60), 1))
    write(folder / "case1" / "a.json", labelme("a.png", [shape("tumor", [[10, 10], [40, 10], [40, 30]])],
                                               caption="Invasive ductal carcinoma, grade 2."))
    write(folder / "case1" / "b.png", make_image("RGB", (90, 60), 2))
    write(folder / "case1" / "b.json", labelme("b.png", [shape("necrosis", [[0, 0], [5, 5]]),
                                                         shape("tumor", [[1, 2], [3, 9]], "poorly differentiated"),
                                                         shape("necrosis", [[7, 7], [9, 9]])],
                                               flags={"H&E": True, "IHC": False}))
    data = base64.b64encode(make_image("RGB", (90, 60), 3)).decode()
    write(folder / "c.json", labelme("..\\elsewhere\\c.png", [shape("caption", [[0, 0], [1, 1]], "Mitotic figure, "
                                                                    "high power.")], imageData=data))
    write(folder / "d.png", make_image("RGB", (90, 60), 4))
    write(folder / "d.json", labelme("d.png", [], flags={"caption: Normal colonic mucosa.": True}))
    write(folder / "e.json", labelme("e.png", [shape("x", [[0, 0], [1, 1]])]))  # image missing
    write(folder / "notes.json", json.dumps({"comment": "not a labelme file"}))
    write(root / "unlicensed" / "f.png", make_image("RGB", (90, 60), 5))
    write(root / "unlicensed" / "f.json", labelme("f.png", [], caption="Has no collection.yaml."))
    return folder


def test_labelme_captions_licence_and_shapes(tmp_path):
    labelme_folder(tmp_path)
    results = extract(tmp_path)
    records, rejects = records_of(results), rejects_of(results)
    got = {k: (r["caption"], meta(r)["caption_origin"]) for k, r in records.items()}
    assert got == {
        "annotated-set/case1/a": ("Invasive ductal carcinoma, grade 2.", "caption_field"),
        "annotated-set/case1/b": ("necrosis; tumor: poorly differentiated; H&E", "labels"),
        "annotated-set/c": ("Mitotic figure, high power.", "caption_shape"),
        "annotated-set/d": ("Normal colonic mucosa.", "caption_flag"),
    }
    b = meta(records["annotated-set/case1/b"])
    assert b["flags"] == ["labels_as_caption"] and b["labels"] == ["necrosis", "tumor", "H&E"]
    assert b["shapes"][1] == {"label": "tumor", "shape_type": "polygon", "bbox": [1.0, 2.0, 2.0, 7.0]}
    assert b["labelme_size"] == [90, 60] and records["annotated-set/case1/b"]["license"] == "CC BY 4.0"
    assert meta(records["annotated-set/c"])["image_from"] == "imageData"
    assert rejects["private:annotated-set/e"] == "missing image file: e.png"
    assert rejects["private:annotated-set/notes"].startswith("not a Labelme file")
    (unlicensed,) = [v for k, v in rejects.items() if k.endswith("/unlicensed/f")]
    assert unlicensed.startswith("missing licence") and "missing provenance" in unlicensed
    results = extract(tmp_path / "annotated", labels_as_caption=False)
    assert rejects_of(results)["private:annotated-set/case1/b"].startswith("missing caption")


def test_manifest_encodings_are_detected_or_rejected(tmp_path):
    write(tmp_path / "latin" / "x.png", make_image("RGB", (80, 80), 1))
    text = CSV_HEADER + "l1,x.png,Granulome épithélioïde – 40 µm.,,CC BY 4.0,Hôpital Saint-Louis,\n"
    write(tmp_path / "latin" / "manifest.csv", text.encode("cp1252"))
    (rec,) = records_of(extract(tmp_path / "latin")).values()
    assert rec["caption"] == "Granulome épithélioïde – 40 µm." and meta(rec)["manifest_encoding"] == "cp1252"
    assert meta(rec)["provenance"] == "Hôpital Saint-Louis"
    write(tmp_path / "utf16" / "x.png", make_image("RGB", (80, 80), 1))
    write(tmp_path / "utf16" / "manifest.csv", text.encode("utf-16"))
    (rec,) = records_of(extract(tmp_path / "utf16")).values()
    assert rec["caption"] == "Granulome épithélioïde – 40 µm."
    japanese = CSV_HEADER + "j1,x.png,胃の印環細胞癌、PAS染色。,,CC BY 4.0,病理アーカイブ,\n"
    write(tmp_path / "sjis" / "manifest.csv", japanese.encode("shift_jis"))
    ((key, reason),) = rejects_of(extract(tmp_path / "sjis")).items()
    assert key == "private:sjis/manifest.csv"
    assert reason.startswith("undecodable manifest: manifest.csv is not UTF-8") and "encoding=" in reason
    write(tmp_path / "sjis" / "x.png", make_image("RGB", (80, 80), 1))
    (rec,) = records_of(extract(tmp_path / "sjis", encoding="shift_jis")).values()
    assert rec["caption"] == "胃の印環細胞癌、PAS染色。"


def test_empty_and_malformed_manifests_are_one_ledger_line_each(tmp_path):
    write(tmp_path / "a" / "zero.csv", b"")
    write(tmp_path / "b" / "header.csv", CSV_HEADER)
    write(tmp_path / "c" / "wrong.csv", "name,size\nx,1\n")
    write(tmp_path / "d" / "empty.jsonl", "\n\n")
    write(tmp_path / "e" / "readme.txt", "images only")
    rejects = rejects_of(extract(tmp_path))
    assert rejects == {
        "private:a/zero.csv": "empty manifest: zero.csv has no rows",
        "private:b/header.csv": "empty manifest: header.csv has no rows",
        "private:c/wrong.csv": "not a manifest: wrong.csv has no image or caption column "
                               "(expected one of: image, image_path, file, file_name, filename, path)",
        "private:d/empty.jsonl": "empty manifest: empty.jsonl has no rows",
    }
    assert rejects_of(extract(tmp_path / "e")) == {
        "private:e/": "no manifest: e holds no .csv/.tsv/.jsonl manifest and no Labelme .json file"}


# --- through the CLI ---------------------------------------------------------------------------


def build_corpus(root):
    slides_manifest(root / "slides")
    labelme_folder(root)
    write(root / "more" / "manifest.csv", CSV_HEADER + "\n".join(
        f"m{i},img{i}.png,Section {i} of a colonic polyp.,,CC BY 4.0,series M,"
        for i in range(12)) + "\n")
    for i in range(12):
        write(root / "more" / f"img{i}.png", make_image("RGB", (72, 64), 10 + i))
    return 13 + 7 + 12  # inputs: manifest rows + Labelme files (notes.json included) + rows


def cli(*args):
    from pathasst.cli import main

    assert main(["extract", "private", *map(str, args)]) == 0


def read(out):
    """(records by id without volatile fields, ledger lines by id, split by id) of a dataset folder."""
    import pyarrow.parquet as pq

    rows, split = {}, {}
    for shard in sorted((out / "data").glob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            row["image"] = row["image"]["bytes"]
            rows[row["id"]] = row
            split[row["id"]] = shard.name.split("-")[0]
    ledger = {}
    for line in (out / "rejects.jsonl").read_text().splitlines():
        item = json.loads(line)
        ledger[item["id"]] = item
    return rows, ledger, split


def test_cli_end_to_end_resume_and_groups(tmp_path):
    import datasets

    inputs = build_corpus(tmp_path / "corpus")
    out = tmp_path / "caps"
    cli(tmp_path / "corpus" / "slides", "--out", out)  # part of the corpus first
    cli(tmp_path / "corpus", "--out", out)  # then all of it: the done part is skipped
    cli(tmp_path / "corpus", "--out", out)  # and again: nothing new, nothing lost
    ds = datasets.load_dataset(str(out))
    total = sum(len(split) for split in ds.values())
    rows, ledger, split = read(out)
    assert total == len(rows) == 5 + 4 + 12
    assert len(rows) + len(ledger) == inputs
    assert len({r["id"] for s in ds.values() for r in s}) == total  # no duplicates
    by_collection = {}
    for rid, name in split.items():
        by_collection.setdefault(rid.split("/")[0], set()).add(name)
    assert all(len(names) == 1 for names in by_collection.values())  # a collection never spans splits
    row = next(r for s in ds.values() for r in s if r["id"] == "slides/s1")
    assert row["image"].size == (96, 72) and row["license_url"] == "https://creativecommons.org/licenses/by/4.0/"


def test_num_proc_2_equals_1_and_shards_split_the_inputs(tmp_path):
    inputs = build_corpus(tmp_path / "corpus")
    corpus = tmp_path / "corpus"
    cli(corpus, "--out", tmp_path / "one")
    cli(corpus, "--out", tmp_path / "two", "--num-proc", "2")
    one, two = read(tmp_path / "one"), read(tmp_path / "two")
    assert one == two
    cli(corpus, "--out", tmp_path / "k1", "--shard", "1/2")
    cli(corpus, "--out", tmp_path / "k2", "--shard", "2/2")
    (r1, l1, _), (r2, l2, _) = read(tmp_path / "k1"), read(tmp_path / "k2")
    assert r1 and r2 and not set(r1) & set(r2) and not set(l1) & set(l2)
    assert {**r1, **r2} == one[0] and {**l1, **l2} == one[1]
    assert len(r1) + len(r2) + len(l1) + len(l2) == inputs


@pytest.mark.parametrize("bad", ["encoding=nonsense-8", "collection=///"])
def test_config_is_checked_before_work(tmp_path, bad):
    from pathasst.errors import ConfigError
    from pathasst.config import load_config

    with pytest.raises(ConfigError):
        load_config(PrivateConfig, None, [bad])
