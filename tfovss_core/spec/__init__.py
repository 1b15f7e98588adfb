"""Plain data, no torch: driver settings, vocabularies, weight specs, dataset presets, run records."""
