"""Evaluation: MMSeg-exact metrics, benchmark dataset importers, the benchmark runner and its report."""
