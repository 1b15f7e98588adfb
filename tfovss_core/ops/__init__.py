"""Shared math on tensors: post-processing, PAMR, FLOP counting and memory budgets."""
