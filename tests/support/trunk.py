"""Watching a vision backbone's frozen trunk: how often it runs, and on how many windows."""
from __future__ import annotations


def record_trunk_batches(visual, monkeypatch=None) -> list[int]:
    """Wraps ``visual.run_trunk`` so that every run appends its batch size (the windows through
    the frozen blocks) to the returned list. With ``monkeypatch`` the wrapper goes at the end of
    the test; without, it stays on ``visual`` (a model built for the purpose)."""
    batches: list[int] = []
    original = visual.run_trunk

    def counting(images, request):
        batches.append(images.shape[0])
        return original(images, request)

    if monkeypatch is None:
        visual.run_trunk = counting
    else:
        monkeypatch.setattr(visual, "run_trunk", counting)
    return batches
