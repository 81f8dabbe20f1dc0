"""Baselines that benchmarks compare against: the published recipe's loader."""
