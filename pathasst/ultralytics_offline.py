"""The one place that prepares ultralytics to run offline (DESIGN.md §8).

Left alone, ultralytics reaches for the network in several places: it checks whether it is online
at import, downloads ``Arial.ttf`` the first time it draws a label or checks a dataset, downloads
``yolo26n.pt`` for its mixed-precision check, resolves a bare model name such as ``yolov8m.pt`` by
downloading the weights, pip-installs missing requirements, and reports usage events. Every
pathasst module that uses ultralytics calls :func:`import_ultralytics` instead of ``import
ultralytics``; it

- sets ``YOLO_OFFLINE=1`` (ultralytics' online check answers False without a DNS lookup, and its
  event reporting and update checks stay off) and ``YOLO_AUTOINSTALL=False`` (no pip installs);
- points ``YOLO_CONFIG_DIR`` at a writable folder of our own (``$PATHASST_CACHE`` or
  ``~/.cache/pathasst``, then ``ultralytics``) unless the user set it, and in that folder of ours
  turns ultralytics' tracker integrations off in ``settings.json`` (``sync``, ClearML, Comet, DVC,
  MLflow, Ray Tune, W&B: several of them open connections when their package happens to be
  installed) and TensorBoard on or off after the training config's ``log_with``. A folder the
  user chose keeps the settings the user gave it;
- copies a TrueType font that is already on the machine (matplotlib's DejaVu Sans, a dependency of
  ultralytics itself) to ``Arial.ttf`` and ``Arial.Unicode.ttf`` in that folder, where ultralytics
  looks before downloading them;
- puts Pillow's ``Image.open`` back: importing ultralytics replaces it for the whole process with a
  wrapper that answers an unidentifiable file by pip-installing ``pi-heif`` (HEIC support), which
  offline turns the ``UnidentifiedImageError`` every image check in pathasst relies on into an
  ``ImportError``.

What it cannot set from outside, callers handle: models are ``.yaml`` architectures or local
``.pt`` files only (:func:`check_local_model`), and AMP's download-based self-test is replaced by
:func:`offline_amp_check` while a training run holds :func:`patched_amp_check`.

The environment variables are read by ultralytics when it is first imported, so this module must
run first; if ultralytics was imported before (by other code in the same process), the module-level
flags that those variables set are corrected in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

from pathasst.errors import ConfigError

log = logging.getLogger(__name__)

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
#: ultralytics settings that enable an integration that may talk to a server.
INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "wandb")
MODEL_SUFFIXES = (".yaml", ".yml", ".pt")

_prepared_dir: Optional[Path] = None
_owned_dir = False  # True when YOLO_CONFIG_DIR is the folder this module chose


def default_config_dir() -> Path:
    """Where ultralytics keeps its settings and fonts when the user did not set ``YOLO_CONFIG_DIR``."""
    root = os.environ.get("PATHASST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pathasst"
    )
    return Path(root) / "ultralytics"


def find_font() -> Path:
    """A TrueType font file already on this machine: matplotlib's DejaVu Sans, else a system font.

    Raises:
        ConfigError: no TrueType font was found (ultralytics would otherwise try to download one).
    """
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    except ImportError:  # ultralytics depends on matplotlib; keep looking all the same
        pass
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts"):
        if os.path.isdir(root):
            for dirpath, _, files in os.walk(root):
                for name in sorted(files):
                    if name.lower().endswith(".ttf"):
                        return Path(dirpath) / name
    raise ConfigError(
        "no TrueType font found on this machine (looked for matplotlib's DejaVuSans.ttf and system fonts); "
        "ultralytics would try to download Arial.ttf. Place any .ttf file as Arial.ttf in "
        f"{os.environ.get('YOLO_CONFIG_DIR') or default_config_dir()}/Ultralytics/"
    )


def _place_fonts(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    missing = [name for name in FONT_NAMES if not (folder / name).is_file()]
    if not missing:
        return
    font = find_font()
    for name in missing:
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(font, tmp)
        os.replace(tmp, folder / name)  # atomic: a concurrent run never sees half a font


def set_environment() -> Path:
    """Set the variables ultralytics reads at import; return the config folder it will use.

    Raises:
        ConfigError: the config folder cannot be created or written.
    """
    global _owned_dir
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    user_dir = os.environ.get("YOLO_CONFIG_DIR")
    if not user_dir:
        _owned_dir = True
    base = Path(user_dir or default_config_dir()).expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"ultralytics needs a writable config folder; {base} is not ({exc.strerror or exc}). "
            "Set YOLO_CONFIG_DIR to a writable folder."
        ) from None
    os.environ["YOLO_CONFIG_DIR"] = str(base)
    return base / "Ultralytics"  # ultralytics appends this sub-folder


def import_ultralytics(log_with: str = "none") -> ModuleType:
    """Import ultralytics prepared for offline use (see the module docstring) and return it.

    Args:
        log_with: the training config's tracker choice; ``tensorboard`` or ``all`` turn ultralytics'
            TensorBoard callback on, anything else off.

    Raises:
        ConfigError: ultralytics is not installed, or no writable config folder / font.
    """
    global _prepared_dir
    set_environment()
    try:
        import ultralytics
        import ultralytics.utils as uutils
        import ultralytics.utils.checks as uchecks
    except ImportError as exc:
        raise ConfigError(
            f"the subfigure detector needs ultralytics ({exc}); install it with: pip install 'pathasst[detect]'"
        ) from None
    # Imported earlier by someone else: the flags its import computed from the environment are stale.
    uutils.ONLINE = False
    uchecks.ONLINE = False
    uutils.AUTOINSTALL = False
    uchecks.AUTOINSTALL = False
    _restore_pil_open()
    folder = Path(uutils.USER_CONFIG_DIR)
    _place_fonts(folder)
    if _owned_dir:
        settings = uutils.SETTINGS
        wanted = {key: False for key in INTEGRATIONS if key in settings}
        wanted["sync"] = False
        if "tensorboard" in settings:
            wanted["tensorboard"] = log_with in ("tensorboard", "all")
        if any(settings.get(k) != v for k, v in wanted.items()):
            settings.update(wanted)  # persisted in our own folder's settings.json
    _prepared_dir = folder
    return ultralytics


def _restore_pil_open() -> None:
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:
        return
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def check_local_model(model: str | os.PathLike, what: str = "model") -> str:
    """Refuse model references that ultralytics would resolve by downloading.

    A ``.yaml`` architecture (a file, or a name ultralytics ships such as ``yolov8m.yaml``) builds a
    fresh model; a ``.pt`` must be a file that exists. A bare name (``yolov8m``) or a missing
    ``.pt`` would make ultralytics fetch weights from the internet.

    Returns:
        the reference as a string.

    Raises:
        ConfigError: naming the reference and what is accepted.
    """
    ref = str(model)
    suffix = Path(ref).suffix.lower()
    if ref.startswith(("http://", "https://", "ul://", "hub:")):
        raise ConfigError(f"{what}={ref}: URLs are not loaded (nothing is downloaded); pass a local .pt file")
    if suffix not in MODEL_SUFFIXES:
        raise ConfigError(
            f"{what}={ref}: expected a YOLO architecture (.yaml, e.g. yolov8m.yaml) or a local checkpoint (.pt); "
            "a bare name would make ultralytics download weights"
        )
    if suffix == ".pt" and not Path(ref).expanduser().is_file():
        raise ConfigError(
            f"{what}={ref}: checkpoint file not found (ultralytics would try to download it; nothing is "
            "downloaded here). Pass the path of a local .pt, e.g. a run's weights/best.pt"
        )
    return ref


def offline_amp_check(model) -> bool:
    """ultralytics' AMP check without its download: the known-bad GPU list only.

    ultralytics compares FP32 and FP16 outputs of a downloaded ``yolo26n.pt``; offline it skips the
    comparison and enables AMP anyway. We do the same without attempting the download, keeping its
    list of GPUs whose FP16 training is known to produce NaN losses.
    """
    import re

    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    name = torch.cuda.get_device_name(device)
    bad = re.compile(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.I)
    if bad.search(name):
        log.warning("AMP disabled: FP16 training on %s is known to give NaN losses", name)
        return False
    return True


@contextlib.contextmanager
def patched_amp_check() -> Iterator[None]:
    """Within the block, ultralytics' trainer uses :func:`offline_amp_check` (no download)."""
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.check_amp
    trainer_module.check_amp = offline_amp_check
    try:
        yield
    finally:
        trainer_module.check_amp = original


__all__ = [
    "check_local_model",
    "default_config_dir",
    "find_font",
    "import_ultralytics",
    "offline_amp_check",
    "patched_amp_check",
    "set_environment",
]
