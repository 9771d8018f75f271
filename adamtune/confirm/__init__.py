"""The confirmation stage: ranking the search's trials, racing the finalists and Adam's defaults on fresh
seeds and validation folds inside the workers, and reading the stored stage back.

May import: ``core`` … ``trials``.
"""
