"""Reading a study: summaries, the recommendation, importance and ranges, plots, the HTML report, snippets
to paste, the live progress display, and ``verify`` (which trains, through the same runner, and records
its result on the study).

May import: ``core`` … ``confirm``. Writes nothing to the study except the verify result.
"""
