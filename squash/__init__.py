"""Client-side helpers for Squash artifacts.

    from squash import load_pretrained
    model = load_pretrained("path/to/artifact")   # any Squash artifact, as a transformers model

Needs the worker extras (`pip install "squash[worker]"`): torch, transformers, compressed-tensors.
"""

from workers.formats.loader import artifact_format, load_pretrained

__all__ = ["artifact_format", "load_pretrained"]
