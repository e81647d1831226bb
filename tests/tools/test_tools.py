"""The tool registry (issues #6/#9): schemas, argument validation, IHC quantification, `pathasst tool`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pathasst.cli import main
from pathasst.errors import InputError
from pathasst.tools import (
    ToolArgumentError,
    check_schema,
    get,
    list_tools,
    openai_schema,
)

skdata = pytest.importorskip("skimage.data")
from skimage import color

from pathasst.tools.ihc import DEFAULTS, quantify_ihc

EXPECTED = {"ihc_quantify", "pathclip_zero_shot", "pathology_selector", "subfigure_detect"}


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return skdata.immunohistochemistry()


@pytest.fixture(scope="module")
def haematoxylin_only(ihc) -> np.ndarray:
    hed = color.rgb2hed(ihc)
    hed[..., 2] = 0  # no DAB
    return (np.clip(color.hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def ihc_png(ihc, tmp_path_factory):
    path = tmp_path_factory.mktemp("ihc") / "ihc.png"
    Image.fromarray(ihc).save(path)
    return path


# ------------------------------------------------------------------ registry


def test_registry_holds_the_tools_with_valid_schemas_and_openai_shape():
    assert {t.name for t in list_tools()} >= EXPECTED
    for tool in list_tools():
        check_schema(tool.parameters)
        check_schema(tool.result_schema)
        assert tool.parameters["type"] == "object"
        schema = openai_schema(tool)
        assert set(schema) == {"type", "function"} and schema["type"] == "function"
        assert set(schema["function"]) == {"name", "description", "parameters"}
        assert schema["function"]["name"] == tool.name and schema["function"]["description"]
        assert openai_schema(tool.name) == schema
        json.dumps(schema)  # serialisable as sent to an endpoint
        ok, reason = tool.available()
        assert isinstance(ok, bool) and (ok or reason)


def test_unknown_tool_names_the_known_ones():
    with pytest.raises(Exception, match="ihc_quantify"):
        get("no_such_tool")


@pytest.mark.parametrize(
    "arguments, argument, message",
    [
        ({"dab_threshold": "high"}, "dab_threshold", "not of type 'number'"),
        ({"dab_threshold": -0.1}, "dab_threshold", "minimum"),
        ({"min_nucleus_area": 2.5}, "min_nucleus_area", "integer"),
        ({"background_threshold": 1.5}, "background_threshold", "maximum"),
        ({"dab_treshold": 0.1}, "dab_treshold", "unknown argument"),
    ],
)
def test_argument_validation_names_the_argument(arguments, argument, message):
    with pytest.raises(ToolArgumentError, match=message) as info:
        get("ihc_quantify").validate_arguments(arguments)
    assert info.value.argument == argument
    assert f"'{argument}'" in str(info.value)


def test_required_argument_and_defaults_filled():
    with pytest.raises(ToolArgumentError, match="required") as info:
        get("pathology_selector").validate_arguments({})
    assert info.value.argument == "model"
    filled = get("ihc_quantify").validate_arguments({"ring_width": 0})
    assert filled == {**DEFAULTS, "ring_width": 0}


def test_pathclip_tool_names_a_model_that_is_not_a_pathclip_folder(ihc, tmp_path):
    pytest.importorskip("open_clip")
    tool = get("pathclip_zero_shot")
    assert tool.available() == (True, "")
    with pytest.raises(InputError, match="not a PathCLIP folder"):
        tool.run(Image.fromarray(ihc), labels=["a", "b"], model=str(tmp_path))


# ------------------------------------------------------------------ IHC


def test_ihc_dab_fraction_on_a_real_micrograph_against_a_haematoxylin_control(ihc, haematoxylin_only):
    tool = get("ihc_quantify")
    stained = tool.run(Image.fromarray(ihc))
    control = tool.run(Image.fromarray(haematoxylin_only))
    # FHL2 (DAB) stains most of the epithelium of this section
    assert stained["dab_positive_fraction"] > 0.4
    assert control["dab_positive_fraction"] < 0.02
    assert stained["dab_positive_fraction"] > 10 * max(control["dab_positive_fraction"], 0.01)
    assert stained["nuclei_count"] > 50 and control["nuclei_count"] > 50
    assert 0.1 < stained["positive_nuclei_fraction"] < 0.9
    assert control["positive_nuclei"] == 0
    assert 0.3 < stained["tissue_fraction"] <= 1
    assert stained["thresholds"] == DEFAULTS


def test_ihc_is_stable_to_flip_and_rotation(ihc):
    base = quantify_ihc(ihc)
    for variant in (np.rot90(ihc), ihc[:, ::-1], ihc[::-1]):
        other = quantify_ihc(np.ascontiguousarray(variant))
        assert other["dab_positive_fraction"] == pytest.approx(base["dab_positive_fraction"], abs=1e-9)
        assert other["tissue_fraction"] == pytest.approx(base["tissue_fraction"], abs=1e-9)
        assert abs(other["nuclei_count"] - base["nuclei_count"]) <= 2
        assert other["positive_nuclei_fraction"] == pytest.approx(base["positive_nuclei_fraction"], abs=0.03)


def test_ihc_thresholds_are_configurable_and_monotonic(ihc):
    low = quantify_ihc(ihc, dab_threshold=0.02)
    high = quantify_ihc(ihc, dab_threshold=0.1)
    assert low["dab_positive_fraction"] > high["dab_positive_fraction"]
    assert low["thresholds"]["dab_threshold"] == 0.02
    nucleus_only = quantify_ihc(ihc, ring_width=0)
    assert nucleus_only["positive_nuclei"] <= quantify_ihc(ihc)["positive_nuclei"]


def test_ihc_blank_image_is_all_background():
    result = get("ihc_quantify").run(Image.new("RGB", (64, 64), "white"))
    assert result["tissue_fraction"] == 0 and result["nuclei_count"] == 0
    assert result["dab_positive_fraction"] == 0 and result["positive_nuclei_fraction"] == 0


# ------------------------------------------------------------------ CLI


def test_cli_list_shows_every_tool_and_availability(capsys):
    assert main(["tool", "list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out
    assert "[available]" in out
    assert main(["tool", "list", "--json"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    assert {s["function"]["name"] for s in schemas} >= EXPECTED


def test_cli_run_prints_the_json_result(ihc_png, capsys):
    assert main(["tool", "run", "ihc_quantify", str(ihc_png), "dab_threshold=0.05", "ring_width=0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["thresholds"]["dab_threshold"] == 0.05 and result["thresholds"]["ring_width"] == 0
    assert result["dab_positive_fraction"] > 0.4


def test_cli_run_errors_exit_2_with_a_reason(ihc_png, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    assert main(["tool", "run", "ihc_quantify", str(bad)]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["tool", "run", "ihc_quantify", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["tool", "run", "ihc_quantify", str(ihc_png), "dab_threshold=abc"]) == 2
    assert "'dab_threshold'" in capsys.readouterr().err
    assert main(["tool", "run", "ihc_quantify", str(ihc_png), "bogus=1"]) == 2
    assert "'bogus'" in capsys.readouterr().err
    assert main(["tool", "run", "pathclip_zero_shot", str(ihc_png), "labels=[a, b]", "model=m"]) == 2
    assert "not a Hub id" in capsys.readouterr().err
    assert main(["tool", "run", "no_such_tool", str(ihc_png)]) == 2
    assert "known tools" in capsys.readouterr().err


def test_selector_tool_reports_a_missing_model_clearly(ihc_png, tmp_path, capsys):
    pytest.importorskip("timm")
    assert main(["tool", "run", "pathology_selector", str(ihc_png), f"model={tmp_path / 'nope'}"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_selector_tool_runs_a_timm_folder(ihc, tmp_path):
    pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    folder = tmp_path / "selector"
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    save_for_hf(model, folder, model_config={"label_names": ["other", "pathology"]})
    result = get("pathology_selector").run(Image.fromarray(ihc), model=str(folder), device="cpu", threshold=0.0)
    assert set(result["probabilities"]) == {"other", "pathology"}
    assert result["pathology_score"] == pytest.approx(result["probabilities"]["pathology"])
    assert result["is_pathology"] is True and result["positive_labels"] == ["pathology"]
