"""Whole commands, each reading films, fitting or loading a detector, scoring and writing its
outputs: :mod:`.benchmark`, :mod:`.reproduce`, :mod:`.demo` (``make demo``), and the shared
finished-cell bookkeeping of the first two, :mod:`.cells`. ``train``, ``score``, ``evaluate``
and ``calibrate`` are in :mod:`cxr_anomaly.pipeline`.
"""
