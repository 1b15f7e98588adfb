"""Frozen backbones: loading through open_clip, the dense vision backbone and its trunk primitives,
the cached text encoder, per-architecture constants and the synthetic test models behind the
``tiny:`` / ``random:`` / ``synthetic:`` weight specs. Room for a second frozen vision model
(DINO-style) loaded and cached the same way."""
