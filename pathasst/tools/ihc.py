"""IHC quantification by colour deconvolution: the DAB-positive area and the positive-nuclei fraction.

The read-out a pathologist gives for Ki-67, PD-L1, ER/PR and similar DAB stains, computed from an
RGB image of a haematoxylin + DAB slide:

1. **Colour deconvolution.** :func:`skimage.color.rgb2hed` (Ruifrok & Johnston's stain vectors)
   turns RGB into optical densities of haematoxylin (H), eosin (E) and DAB (D). Values are in
   ``rgb2hed``'s units (log10 optical density scaled by the stain vector, about 0 for no stain and
   0.05-0.3 for strong stain).
2. **Tissue mask.** A pixel is tissue when its mean RGB intensity (0..1) is below
   ``background_threshold`` (default 0.85): near-white glass and empty background are excluded.
3. **DAB-positive area.** A tissue pixel is DAB-positive when its DAB density exceeds
   ``dab_threshold`` (default 0.03). ``dab_positive_fraction`` = DAB-positive pixels / tissue pixels.
4. **Nuclei.** The haematoxylin channel, smoothed by a Gaussian of ``smooth_sigma`` pixels
   (default 1), is thresholded at ``hematoxylin_threshold`` (default 0.025) within tissue; connected
   components (:func:`skimage.measure.label`, 8-connectivity) of at least ``min_nucleus_area``
   pixels (default 20) are nuclei. Overlapping nuclei are not split (no watershed): a count is a
   count of blobs, a lower bound in crowded tissue.
5. **Positive nuclei.** A nucleus is positive when the mean DAB density **inside it** exceeds
   ``dab_threshold``, **or** the mean DAB density in a ring of ``ring_width`` pixels around it
   (default 2; its expansion by :func:`skimage.segmentation.expand_labels`, not overlapping other
   nuclei) does. The inside test scores nuclear stains (Ki-67, ER, PR); the ring scores membranous
   and cytoplasmic ones (PD-L1, HER2), so one rule serves both. Set ``ring_width=0`` to score the
   nucleus alone.

Images larger than ``max_side`` pixels on their longer side (default 4096) are downscaled first, so
that a whole-slide export cannot exhaust memory; ``min_nucleus_area`` and ``ring_width`` are then in
the downscaled image's pixels, and the result says the size it measured.

scikit-image is imported when the tool runs, never at import.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "dab_threshold": 0.03,
    "hematoxylin_threshold": 0.025,
    "background_threshold": 0.85,
    "min_nucleus_area": 20,
    "ring_width": 2,
    "smooth_sigma": 1.0,
    "max_side": 4096,
}

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dab_threshold": {
            "type": "number", "minimum": 0, "default": DEFAULTS["dab_threshold"],
            "description": "DAB optical density (skimage rgb2hed units) above which a pixel is DAB-positive",
        },
        "hematoxylin_threshold": {
            "type": "number", "minimum": 0, "default": DEFAULTS["hematoxylin_threshold"],
            "description": "haematoxylin optical density above which a smoothed pixel belongs to a nucleus",
        },
        "background_threshold": {
            "type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": DEFAULTS["background_threshold"],
            "description": "mean RGB intensity (0-1) at or above which a pixel is background, not tissue",
        },
        "min_nucleus_area": {
            "type": "integer", "minimum": 1, "default": DEFAULTS["min_nucleus_area"],
            "description": "smallest nucleus, in pixels",
        },
        "ring_width": {
            "type": "integer", "minimum": 0, "maximum": 50, "default": DEFAULTS["ring_width"],
            "description": "width in pixels of the ring around a nucleus whose mean DAB also makes it positive "
                           "(0: the nucleus alone)",
        },
        "smooth_sigma": {
            "type": "number", "minimum": 0, "maximum": 20, "default": DEFAULTS["smooth_sigma"],
            "description": "Gaussian smoothing of the haematoxylin channel before nuclei are segmented",
        },
        "max_side": {
            "type": "integer", "minimum": 64, "default": DEFAULTS["max_side"],
            "description": "longer image side above which the image is downscaled before measuring",
        },
    },
    "additionalProperties": False,
}

_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dab_positive_fraction": {**_FRACTION, "description": "DAB-positive tissue area / tissue area"},
        "tissue_fraction": {**_FRACTION, "description": "tissue area / image area"},
        "nuclei_count": {"type": "integer", "minimum": 0},
        "positive_nuclei": {"type": "integer", "minimum": 0},
        "positive_nuclei_fraction": {**_FRACTION, "description": "positive nuclei / nuclei (0 when none)"},
        "thresholds": {"type": "object", "description": "the settings the measurement used"},
        "measured_size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                          "description": "[width, height] measured, after any downscaling"},
    },
    "required": ["dab_positive_fraction", "tissue_fraction", "nuclei_count", "positive_nuclei",
                 "positive_nuclei_fraction", "thresholds"],
}

DESCRIPTION = ("Quantify an IHC (haematoxylin + DAB) image by colour deconvolution: DAB-positive area "
               "fraction of the tissue and fraction of DAB-positive nuclei, as in a Ki-67 or PD-L1 read-out.")


def quantify_ihc(image: Any, **arguments: Any) -> dict[str, Any]:
    """Measure an RGB IHC image (PIL image or ``(H, W, 3)`` uint8 array); see the module docstring.

    Arguments not given take :data:`DEFAULTS`. Returns the dict described by :data:`RESULT_SCHEMA`.
    """
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.measure import label
    from skimage.segmentation import expand_labels

    settings = {**DEFAULTS, **arguments}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"quantify_ihc: unknown argument(s) {unknown}")

    if isinstance(image, Image.Image):
        img = image.convert("RGB")
    else:
        img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    max_side = int(settings["max_side"])
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    rgb = np.asarray(img)

    hed = rgb2hed(rgb)
    hema, dab = hed[..., 0], hed[..., 2]
    tissue = rgb.mean(axis=-1) / 255.0 < float(settings["background_threshold"])
    n_tissue = int(tissue.sum())
    dab_pos = (dab > float(settings["dab_threshold"])) & tissue

    sigma = float(settings["smooth_sigma"])
    hema_s = ndimage.gaussian_filter(hema, sigma) if sigma > 0 else hema
    nuclei_mask = (hema_s > float(settings["hematoxylin_threshold"])) & tissue
    labels = label(nuclei_mask, connectivity=2)
    n_labels = int(labels.max())
    positive = 0
    count = 0
    if n_labels:
        index = np.arange(1, n_labels + 1)
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index)
        keep = areas >= int(settings["min_nucleus_area"])
        count = int(keep.sum())
        inside = ndimage.mean(dab, labels, index)
        is_pos = inside > float(settings["dab_threshold"])
        ring_width = int(settings["ring_width"])
        if ring_width > 0:
            grown = expand_labels(labels, distance=ring_width)
            ring = np.where(labels == 0, grown, 0)
            has_ring = ndimage.sum_labels(np.ones_like(ring), ring, index) > 0
            ring_mean = np.asarray(ndimage.mean(dab, ring, index))
            is_pos |= has_ring & (np.nan_to_num(ring_mean, nan=0.0) > float(settings["dab_threshold"]))
        positive = int((is_pos & keep).sum())

    return {
        "dab_positive_fraction": float(dab_pos.sum() / n_tissue) if n_tissue else 0.0,
        "tissue_fraction": float(n_tissue / tissue.size) if tissue.size else 0.0,
        "nuclei_count": count,
        "positive_nuclei": positive,
        "positive_nuclei_fraction": float(positive / count) if count else 0.0,
        "thresholds": {k: settings[k] for k in DEFAULTS},
        "measured_size": [int(img.width), int(img.height)],
    }
