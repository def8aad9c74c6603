"""Survival analysis pieces that are neither losses, metrics nor networks: time bins,
survival functions from model outputs, and the evaluation protocol's helpers."""
