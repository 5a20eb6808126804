"""Whole commands, from files to files: each reads films, fits or loads a detector, scores and
writes its outputs. :mod:`.train`, :mod:`.score`, :mod:`.evaluate` and :mod:`.calibrate` are the
CLI's commands of those names; :mod:`.benchmark` and :mod:`.reproduce` run tables of fits (their
finished-cell bookkeeping is :mod:`.cells`); :mod:`.demo` is ``make demo``.

``cli.py`` only parses arguments and calls these functions, so every job can be run from Python
as well. Each job states what it used: how many normal films trained the model, which files
were skipped and why, which split was evaluated.
"""
