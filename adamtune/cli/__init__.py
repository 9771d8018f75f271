"""The ``adamtune`` command line: click commands that parse options, call the layers below and print; an
``AdamtuneError`` becomes one line and an exit code here and nowhere else.

May import: everything. Nothing below imports it.
"""
