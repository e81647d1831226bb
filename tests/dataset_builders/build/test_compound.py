"""The synthetic compound-figure generator: exact boxes, determinism, variety, and its image pool.

Exactness is checked against the pixels, not against the generator's own bookkeeping: with a pool
of flat images, each in a colour of its own, every panel's colour must fill exactly its box (less
its frame), nothing but background may lie outside the boxes (and the charts' canvases), and
painting the letters may change pixels only inside their label boxes. A chart panel's box must be
its frame as drawn: the spines' pixels are its border rows and columns, and no text of the chart
lies outside its canvas.
"""

from __future__ import annotations

import functools
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pathasst.dataset_builders.build import charts, compound
from pathasst.dataset_builders.build.compound import (
    BACKGROUNDS,
    CompoundFigureGenerator,
    ImagePool,
    available_fonts,
    label_text,
)

N_FIGURES = 90


def _flat_colours(n: int) -> list[tuple[int, int, int]]:
    # far from black, white, the greys of backgrounds and borders, and from one another
    levels = (30, 75, 170, 215)
    colours = [(r, g, b) for r in levels for g in levels for b in levels if len({r, g, b}) > 1]
    return colours[:n]


@functools.lru_cache(maxsize=1)
def _flat_pool() -> tuple[ImagePool, tuple[tuple[int, int, int], ...]]:
    colours = _flat_colours(40)
    sizes = [(300, 200), (200, 300), (256, 256), (400, 180), (160, 320)]
    images = [Image.new("RGB", sizes[i % len(sizes)], c) for i, c in enumerate(colours)]
    return ImagePool.from_images(images), tuple(colours)


@functools.lru_cache(maxsize=1)
def _batch():
    pool, colours = _flat_pool()
    gen = CompoundFigureGenerator(pool, seed=7, min_width=400, max_width=900)  # charts: the default 0.3
    return gen, [gen.generate(i) for i in range(N_FIGURES)]


def _chart_areas(fig) -> np.ndarray:
    """Where the figure's charts were drawn (their whole canvases)."""
    area = np.zeros((fig.image.height, fig.image.width), bool)
    for p in fig.plan.panels:
        if p.canvas is not None:
            area[p.canvas.y0:p.canvas.y1, p.canvas.x0:p.canvas.x1] = True
    return area


def _rect_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _keys(arr: np.ndarray) -> np.ndarray:
    """One int per pixel (0xRRGGBB): comparing colours as ints is ~5x faster than per channel."""
    a = arr.astype(np.int32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


def _key(colour) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


def _xyxy(bbox) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in bbox)
    return x, y, x + w, y + h


def test_subfigure_boxes_hold_exactly_their_panel_pixels():
    _, colours = _flat_pool()
    _, figures = _batch()
    for fig in figures:
        arr = np.asarray(fig.image)
        keys = _keys(arr)
        plan = fig.plan
        hosts = {p.inset_of for p in plan.panels if p.inset_of is not None}
        # the objects as written, in panel order: what the dataset says, checked against the pixels
        boxes = [_xyxy(o["bbox"]) for o in fig.objects if o["category"] == "subfigure"]
        charted = _chart_areas(fig)  # a chart's antialiased ink may hit a pool colour by chance
        for panel, (x0, y0, x1, y1) in zip(plan.panels, boxes, strict=True):
            if panel.inset_of is not None or panel.chart is not None:
                continue
            mask = (keys == _key(colours[panel.source])) & ~charted
            b = compound.Rect(x0, y0, x1, y1)
            expected = (b.x0 + panel.border, b.y0 + panel.border, b.x1 - panel.border, b.y1 - panel.border)
            assert _rect_of(mask) == expected, (fig.image_id, plan.layout, panel)
            # a host's colour also fills its zoom inset, which lies inside the host
            if panel.border and plan.panels.index(panel) not in hosts:
                ring = np.zeros(mask.shape, bool)
                ring[b.y0:b.y1, b.x0:b.x1] = True
                ring[b.y0 + panel.border:b.y1 - panel.border, b.x0 + panel.border:b.x1 - panel.border] = False
                covered = np.zeros(mask.shape, bool)
                if panel.label is not None and panel.label.plate is not None:
                    p = panel.label.plate
                    covered[p.y0:p.y1, p.x0:p.x1] = True
                on_ring = np.all(arr[ring & ~covered] == panel.border_color, axis=-1)
                assert on_ring.all(), (fig.image_id, "frame pixels are not the frame colour")


def test_nothing_but_background_outside_the_boxes():
    _, figures = _batch()
    for fig in figures:
        arr = np.asarray(fig.image)
        inside = np.zeros(arr.shape[:2], bool)
        for obj in fig.objects:
            x0, y0, x1, y1 = _xyxy(obj["bbox"])
            inside[y0:y1, x0:x1] = True
        inside |= _chart_areas(fig)  # tick labels and axis titles: outside the frame, inside the canvas
        outside = arr[~inside]
        assert np.all(outside == BACKGROUNDS[fig.plan.background]), fig.image_id


def test_boxes_are_integral_inside_the_image_and_grid_panels_do_not_overlap():
    _, figures = _batch()
    for fig in figures:
        w, h = fig.image.size
        for obj in fig.objects:
            x, y, bw, bh = obj["bbox"]
            assert all(float(v).is_integer() for v in obj["bbox"])
            assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        panels = fig.plan.panels
        grid = [p for p in panels if p.inset_of is None]
        for i, a in enumerate(grid):
            for b in grid[i + 1:]:
                assert not a.box.intersects(b.box), (fig.image_id, a.box, b.box)
        for inset in (p for p in panels if p.inset_of is not None):
            assert panels[inset.inset_of].box.contains(inset.box)
        subfigures = [o for o in fig.objects if o["category"] == "subfigure"]
        assert len(subfigures) == len(panels)


def test_label_boxes_are_the_letters_ink_inside_or_just_above_their_panel():
    gen, figures = _batch()
    checked = Counter()
    for fig in figures:
        bare = np.asarray(gen.generate(fig.plan.index, draw_labels=False).image).astype(int)
        arr = np.asarray(fig.image).astype(int)
        changed = np.any(arr != bare, axis=-1)
        painted = np.zeros(changed.shape, bool)
        written = iter(_xyxy(o["bbox"]) for o in fig.objects if o["category"] == "panel_label")
        for panel in fig.plan.panels:
            label = panel.label
            if label is None:
                continue
            box, b = compound.Rect(*next(written)), panel.box
            assert box == label.box
            if label.position == "outside":
                b = panel.canvas or b  # a chart's letter is above its whole drawing
                assert box.y1 <= b.y0 and b.y0 - box.y1 <= 6 and b.x0 <= box.x0 <= b.x0 + 3, fig.image_id
                assert panel.cell.contains(box)
            else:
                assert b.contains(box), (fig.image_id, box, b)
            region = label.plate or box
            painted[region.y0:region.y1, region.x0:region.x1] = True
            ink = _rect_of(changed[box.y0:box.y1, box.x0:box.x1])
            assert ink is not None, (fig.image_id, label.text)
            if label.plate is None:
                # the box is the ink: every side of it was painted (1 px of faint antialiasing may
                # round to the colour below)
                x0, y0, x1, y1 = ink
                assert x0 <= 1 and y0 <= 1 and box.w - x1 <= 1 and box.h - y1 <= 1, (fig.image_id, label, ink)
            checked[label.position] += 1
        assert not np.any(changed & ~painted), f"{fig.image_id}: letters changed pixels outside their boxes"
    assert set(checked) == set(compound.POSITIONS)


def _label_areas(fig) -> np.ndarray:
    area = np.zeros((fig.image.height, fig.image.width), bool)
    for p in fig.plan.panels:
        if p.label is not None:
            r = p.label.plate or p.label.box
            area[r.y0:r.y1, r.x0:r.x1] = True
    return area


def test_chart_boxes_are_their_frames_as_drawn_and_their_texts_stay_in_the_canvas():
    _, figures = _batch()
    kinds, closed = Counter(), Counter()
    for fig in figures:
        arr = np.asarray(fig.image)
        lettered = _label_areas(fig)
        boxes = [_xyxy(o["bbox"]) for o in fig.objects if o["category"] == "subfigure"]
        for panel, (x0, y0, x1, y1) in zip(fig.plan.panels, boxes, strict=True):
            chart = panel.chart
            if chart is None:
                continue
            c = panel.canvas
            assert c is not None and c.contains(panel.box) and panel.cell.contains(c), fig.image_id
            rgb = tuple(int(chart.spine_color[i:i + 2], 16) for i in (1, 3, 5))
            spine = np.all(arr == rgb, axis=-1)
            frame = spine | lettered  # a letter inside the panel may sit on the frame
            n = chart.line_px
            # the frame's ink is the box's border: n columns at the left, n rows at the bottom, and
            # the top and right ones too when the frame is closed
            assert frame[y0 + n:y1 - n, x0:x0 + n].all(), (fig.image_id, "left spine is not the box's edge")
            assert frame[y1 - n:y1, x0 + n:x1 - n].all(), (fig.image_id, "bottom spine is not the box's edge")
            if chart.full_frame:
                assert frame[y0:y0 + n, x0 + n:x1 - n].all(), (fig.image_id, "top spine is not the box's edge")
                assert frame[y0 + n:y1 - n, x1 - n:x1].all(), (fig.image_id, "right spine is not the box's edge")
            # and not one pixel more: next to the box there is no spine (tick marks cross, sparsely)
            assert spine[y0 + n:y1 - n, x0 - 1].mean() < 0.5 and spine[y1, x0 + n:x1 - n].mean() < 0.5, fig.image_id
            # the chart is pasted as drawn (no resizing) and nothing of it was cut at its canvas
            drawn = np.asarray(charts.render_chart(chart))
            keep = ~lettered[c.y0:c.y1, c.x0:c.x1]
            assert np.array_equal(arr[c.y0:c.y1, c.x0:c.x1][keep], drawn[keep]), fig.image_id
            tx0, ty0, tx1, ty1 = charts.chart_texts_extent()
            assert tx0 >= -0.5 and ty0 >= -0.5 and tx1 <= c.w + 0.5 and ty1 <= c.h + 0.5, (fig.image_id, chart.kind)
            kinds[chart.kind] += 1
            closed[chart.full_frame] += 1
    assert set(kinds) == set(charts.CHART_KINDS), kinds
    assert set(closed) == {True, False}


def test_charts_of_many_sizes_keep_their_frame_exact():
    # beyond the batch: canvases from tiny to wide, every kind, both frames and line widths
    for i in range(60):
        rng = np.random.default_rng([99, i])
        w, h = int(rng.integers(60, 800)), int(rng.integers(50, 600))
        plan = charts.plan_chart(rng, w, h, kind=charts.CHART_KINDS[i % len(charts.CHART_KINDS)])
        if plan is None:
            assert w < 140 or h < 110, (w, h)  # only small canvases may refuse a chart
            continue
        arr = np.asarray(charts.render_chart(plan))
        assert arr.shape == (h, w, 3)
        x0, y0, x1, y1 = plan.frame
        rgb = tuple(int(plan.spine_color[k:k + 2], 16) for k in (1, 3, 5))
        spine = np.all(arr == rgb, axis=-1)
        n = plan.line_px
        assert spine[y0 + n:y1 - n, x0:x0 + n].all() and spine[y1 - n:y1, x0 + n:x1 - n].all(), (i, plan.kind)
        if plan.full_frame:
            assert spine[y0:y0 + n, x0 + n:x1 - n].all() and spine[y0 + n:y1 - n, x1 - n:x1].all(), (i, plan.kind)
        tx0, ty0, tx1, ty1 = charts.chart_texts_extent()
        assert tx0 >= -0.5 and ty0 >= -0.5 and tx1 <= w + 0.5 and ty1 <= h + 0.5, (i, plan.kind, w, h)


# what the generator made before it drew charts (seed 3, figures 0..5): chart_fraction=0 must keep it
_MICROGRAPH_ONLY_SEED3 = [
    ("grid", 647, 228, "white", 26, 0, "upper", "top_left", 3, "JPEG"),
    ("grid", 1191, 1131, "white", 4, 26, "lower", "top_left", 4, "JPEG"),
    ("grid", 705, 521, "white", 0, 25, "upper", "top_left", 9, "JPEG"),
    ("grid", 1065, 836, "black", 30, 0, "upper", "outside", 4, "PNG"),
    ("single", 717, 525, "white", 24, 7, None, None, 2, "JPEG"),
    ("grid", 1233, 650, "black", 0, 0, None, None, 8, "JPEG"),
]


def test_chart_fraction_sets_the_share_of_chart_panels_and_zero_keeps_the_earlier_figures():
    pool, _ = _flat_pool()

    def plans(fraction: float, seed: int, n: int):
        gen = CompoundFigureGenerator(pool, seed=seed, chart_fraction=fraction)
        return [gen._plan(np.random.default_rng([seed, i]), i) for i in range(n)]

    mixed = plans(0.3, 5, 150)
    grid = [p for plan in mixed for p in plan.panels if p.inset_of is None]
    share = sum(p.chart is not None for p in grid) / len(grid)
    assert 0.18 <= share <= 0.42, share
    per_figure = [sum(p.chart is not None for p in plan.panels) / len(plan.panels) for plan in mixed]
    assert min(per_figure) == 0 and max(per_figure) == 1 and any(0 < s < 1 for s in per_figure)
    assert all(p.fit == "chart" and p.source == -1 for p in grid if p.chart is not None)

    none = plans(0.0, 3, 6)
    assert not any(p.chart for plan in none for p in plan.panels)
    summary = [(p.layout, p.width, p.height, p.background, p.gutter, p.margin, p.case, p.position, len(p.panels),
                p.image_format) for p in none]
    assert summary == _MICROGRAPH_ONLY_SEED3

    every = [p for plan in plans(1.0, 5, 40) for p in plan.panels]
    assert sum(p.chart is not None for p in every) / len(every) >= 0.9  # cells too small keep a picture


def test_chart_fraction_is_checked_and_needs_matplotlib(monkeypatch):
    from pathasst.dataset_builders.build.subfig import SubfigConfig, _make_generator

    pool, _ = _flat_pool()
    assert _make_generator(pool, SubfigConfig()).chart_fraction == 0.3  # build subfig's default
    assert _make_generator(pool, SubfigConfig(chart_fraction=0.0)).chart_fraction == 0.0
    with pytest.raises(ValueError, match="chart_fraction"):
        CompoundFigureGenerator(pool, chart_fraction=1.5)
    with pytest.raises(ValueError, match="chart_fraction"):
        SubfigConfig(chart_fraction=-0.1)
    monkeypatch.setattr(charts, "matplotlib_available", lambda: False)
    with pytest.raises(ValueError, match="chart_fraction=0 for micrograph-only"):
        CompoundFigureGenerator(pool, chart_fraction=0.3)
    assert CompoundFigureGenerator(pool, chart_fraction=0).generate(0).objects


def test_same_seed_same_figures_in_any_order_other_seed_differs():
    pool, _ = _flat_pool()
    a = CompoundFigureGenerator(pool, seed=11)
    b = CompoundFigureGenerator(pool, seed=11)
    forward = [a.record(i) for i in range(6)]
    backward = [b.record(i) for i in reversed(range(6))][::-1]
    assert forward == backward
    assert [r["image_id"] for r in forward] == [f"synth-11-{i}" for i in range(6)]
    other = CompoundFigureGenerator(pool, seed=12).record(0)
    assert other["image"] != forward[0]["image"]
    assert other["image_id"] == "synth-12-0"


def test_a_batch_covers_every_layout_background_case_corner_and_inset():
    _, figures = _batch()
    plans = [f.plan for f in figures]
    assert set(p.layout for p in plans) == set(compound.LAYOUTS)
    assert {"white", "black"} <= set(p.background for p in plans)
    assert set(p.case for p in plans) >= set(compound.CASES)
    assert None in {p.case for p in plans}, "some figures have no letters"
    assert set(p.position for p in plans if p.position) == set(compound.POSITIONS)
    assert len({p.font for p in plans if p.font}) >= min(3, len(available_fonts()))
    assert len({p.panels[0].label.size for p in plans if p.panels[0].label}) >= 5
    assert any(p.inset_of is not None for plan in plans for p in plan.panels)
    assert any(p.fit == "zoom" for plan in plans for p in plan.panels)
    assert any(p.fit == "contain" for plan in plans for p in plan.panels)
    assert any(p.border for plan in plans for p in plan.panels)
    assert any(p.label and p.label.plate for plan in plans for p in plan.panels)
    assert 0 in {p.gutter for p in plans} and max(p.gutter for p in plans) >= 15
    singles = [f for f in figures if f.plan.layout == "single"]
    assert singles and all(sum(o["category"] == "subfigure" for o in f.objects) == 1 + sum(
        p.inset_of is not None for p in f.plan.panels) for f in singles)
    counts = [sum(o["category"] == "subfigure" for o in f.objects) for f in figures]
    assert min(counts) == 1 and max(counts) >= 9
    with_charts = [sum(p.chart is not None for p in f.plan.panels) for f in figures]
    assert any(c == len(f.plan.panels) for c, f in zip(with_charts, figures)), "a figure of charts only"
    assert any(0 < c < len(f.plan.panels) for c, f in zip(with_charts, figures)), "a figure mixing both"
    lines = [f.plan for f in figures if f.plan.layout in ("rows", "columns")]
    assert any(len({p.box.h for p in plan.panels if p.inset_of is None}) > 1 for plan in lines)


def test_record_matches_the_pathsubfig_contract():
    from pathasst.records import get_spec

    pool, _ = _flat_pool()
    gen = CompoundFigureGenerator(pool, seed=3)
    for i in range(8):
        record = gen.record(i)
        get_spec("pathsubfig").validate(record)
        with Image.open(io.BytesIO(record["image"])) as img:
            assert img.size == (record["width"], record["height"])
            assert img.format in ("JPEG", "PNG")
        assert record["origin"] == "synthetic"


def test_label_text_cases_and_past_z():
    assert [label_text(i, "upper") for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]
    assert label_text(2, "lower") == "c"
    assert label_text(0, "paren_lower") == "(a)"
    assert label_text(3, "paren_upper") == "(D)"


def test_fonts_are_local_files_and_pillows_default():
    fonts = available_fonts()
    assert fonts[0] == ("pil-default", None)
    for _, path in fonts[1:]:
        assert path.endswith((".ttf", ".otf"))
    mask = compound._text_mask(None, 30, "(b)")
    assert mask.mode == "L" and mask.getbbox() == (0, 0) + mask.size  # cropped to its ink


def test_pool_from_a_folder_rejects_bad_images_and_keeps_the_rest(image_factory, tmp_path):
    image_factory.file("a.png", size=(120, 90), seed=1)
    image_factory.file("sub/b.jpg", size=(90, 120), seed=2)
    image_factory.file("c.tif", mode="I;16", size=(100, 100))
    image_factory.file("d.jpg", mode="CMYK", size=(100, 80))
    image_factory.write("broken.jpg", image_factory.truncated("JPEG"))
    image_factory.file("dot.png", size=(1, 1))
    image_factory.write("notes.txt", b"not an image and not an image suffix")
    pool, rejected = ImagePool.load(image_factory.root, max_side=64)
    assert pool is not None and sorted(pool.names) == ["a.png", "c.tif", "d.jpg", "sub/b.jpg"]
    assert max(max(s) for s in pool.sizes) == 64
    assert {name for name, _ in rejected} == {"broken.jpg", "dot.png"}
    assert pool.get(0).mode == "RGB"
    empty, rejected = ImagePool.load(tmp_path / "images" / "sub", limit=0)
    assert empty is None


def test_pool_from_a_pathcap_dataset_folder(tmp_path):
    from pathasst.records import get_spec
    from pathasst.testing.images import tissue_tile, to_bytes
    from pathasst.writer import DatasetWriter

    with DatasetWriter(tmp_path / "cap", get_spec("pathcap")) as writer:
        for i in range(5):
            img = tissue_tile(96, seed=i)
            writer.add({
                "id": f"fig-{i}", "image": to_bytes(img, "JPEG"), "caption": "H&E", "caption_raw": "H&E",
                "source": "private", "source_id": f"lab/{i}", "figure_id": f"fig-{i}", "license": "CC BY 4.0",
                "width": 96, "height": 96,
            })
        writer.finalize()
    assert compound.is_dataset_folder(tmp_path / "cap")
    pool, rejected = ImagePool.load(tmp_path / "cap")
    assert pool is not None and sorted(pool.names) == [f"fig-{i}" for i in range(5)] and not rejected
    fig = CompoundFigureGenerator(pool, seed=0).generate(0)
    assert fig.objects


def test_generator_refuses_bad_settings():
    pool, _ = _flat_pool()
    with pytest.raises(ValueError, match="seed"):
        CompoundFigureGenerator(pool, seed=-1)
    with pytest.raises(ValueError, match="layout"):
        CompoundFigureGenerator(pool, layouts=["mosaic"])
    with pytest.raises(ValueError, match="empty"):
        ImagePool([], [])


def test_small_pools_and_narrow_figures_still_give_valid_figures():
    pool = ImagePool.from_images([Image.new("RGB", (50, 400), (30, 75, 170))])
    gen = CompoundFigureGenerator(pool, seed=1, min_width=160, max_width=200)
    for i in range(15):
        fig = gen.generate(i)
        assert fig.objects and fig.objects[0]["category"] == "subfigure"
        w, h = fig.image.size
        for obj in fig.objects:
            x, y, bw, bh = obj["bbox"]
            assert bw >= 1 and bh >= 1 and x + bw <= w and y + bh <= h


@pytest.mark.slow  # ~3 s: builds a tile pool from the micrograph and a small dataset
def test_benchmark_reports_its_rates(tmp_path, capsys):
    from pathasst.benchmarks.perf import synthetic_figures

    out = tmp_path / "bench.json"
    assert synthetic_figures.main(["--figures", "12", "--pool-size", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("generate_figures_per_s", "record_figures_per_s", "build_figures_per_s", "peak_rss_mib"):
        assert result[key] > 0
    assert result["build_records"] == 12
    assert "figures/s" in capsys.readouterr().out
