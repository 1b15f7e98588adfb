"""Running methods over images: windows, the Segmenter, the shared-trunk MultiSegmenter and the job runner."""
