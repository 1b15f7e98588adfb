"""Text encoding: truncated text equals full length; the text-embedding cache hits the disk."""
from __future__ import annotations

import pytest
import torch

from tfovss_core.clip.synthetic import tiny_clip


def test_truncated_text_equals_full_length(tiny):
    prompts = ["a photo of a cat.", "a very very long and detailed photograph of a small orange cat on a mat."]
    tokens = tiny.tokenizer(prompts)
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        short = tiny.text.encode_tokens(tokens)
    torch.testing.assert_close(short, full, atol=1e-6, rtol=1e-6)


def test_text_cache_hits_disk(tmp_path):
    m = tiny_clip(seed=0, text_cache_dir=tmp_path)
    first = m.text.encode_queries(["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    m2 = tiny_clip(seed=0, text_cache_dir=tmp_path)
    m2.text._encode_uncached = lambda *a, **k: pytest.fail("should have been read from the cache")
    torch.testing.assert_close(m2.text.encode_queries(["dog", "cat"], ["a photo of a {}.", "a {}."]), first.flip(0))
    other = tiny_clip(seed=3, text_cache_dir=tmp_path)      # other weights -> other cache key
    assert not torch.allclose(other.text.encode_queries(["cat"], ["a {}."]), first[:1])
