"""pathasst: open release and benchmark suite for pathology multimodal AI.

Importing this package is cheap on purpose: it never imports torch, transformers or gradio.
Heavy stacks are imported inside the functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
