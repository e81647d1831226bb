"""A PathCap folder made here and a local OpenAI-compatible server answering with the scripted model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathasst.records import get_spec
from pathasst.testing.images import make_image, make_truncated_image, tissue_tile, to_bytes
from pathasst.writer import DatasetWriter

CAPTIONS = {
    "PMC1/F1": "Colonic adenocarcinoma with cribriform glands and dirty necrosis (H and E, x200).",
    "PMC2/F1": "Ki-67 immunostaining of a lymph node: most cells in the germinal centre are positive.",
    "PMC3/F1": "Renal biopsy showing a cellular crescent compressing the glomerular tuft (PAS).",
    "PMC4/F1": "Skin punch biopsy with spongiotic dermatitis and a superficial perivascular infiltrate.",
    "PMC5/F1": "Liver core biopsy showing macrovesicular steatosis in most hepatocytes, H&E.",
    "PMC6/F1": "Lung resection with granulomas containing multinucleated giant cells.",
}


def pathcap_record(rid: str, caption: str, image: bytes | None = None) -> dict:
    return {
        "id": rid, "image": image if image is not None else make_image("RGB", (40, 32), seed=len(caption)),
        "caption": caption, "caption_raw": f"Figure 1. {caption}", "source": "pubmed",
        "source_id": rid.split("/")[0], "figure_id": rid, "license": "CC BY 4.0", "width": 40, "height": 32,
        "subfigure_label": None, "bbox": None, "meta": None,
    }


def write_pathcap(out: Path, records: list[dict]) -> Path:
    with DatasetWriter(out, get_spec("pathcap"), splits={"train": 0.7, "test": 0.3}) as writer:
        for record in records:
            assert writer.add(record), record["id"]
        writer.finalize()
    return out


@pytest.fixture(scope="session")
def pathcap(tmp_path_factory) -> Path:
    """Six usable records (one an IHC tile), a caption too short, and an undecodable image."""
    records = [pathcap_record(rid, cap) for rid, cap in CAPTIONS.items()]
    records[1]["image"] = to_bytes(tissue_tile(64, seed=1, stain="ihc"))
    records.append(pathcap_record("PMC7/F1", "Kidney."))
    records.append(pathcap_record("PMC8/F1", "Breast core biopsy with invasive ductal carcinoma, H&E.",
                                  image=make_truncated_image("JPEG", keep=0.3)))
    return write_pathcap(tmp_path_factory.mktemp("pathcap") / "in", records)
