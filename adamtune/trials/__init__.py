"""The trial loop: a worker admits trials, runs each through the objective (settings → trial context →
training → report/prune → value) and tells the study, until the study holds its trial target; then it
runs what it was given as ``after_target`` (the confirmation stage).

May import: ``core`` … ``tracking``. Never the confirmation stage, the reports or the command line.
"""
