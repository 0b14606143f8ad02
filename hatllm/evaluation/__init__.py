"""Offline evaluation: metrics, the evaluation CLI, baselines, reports and plots."""
