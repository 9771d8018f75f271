"""Starting searches and workers: validate everything, create or resume the study, seed the baseline,
assemble a worker (tracker, objective, confirmation stage), run N local worker processes, and clean up
after dead workers.

May import: every layer below it (``core`` … ``report``).
"""
