"""Tracing: semantic-convention names (``semconv``), set-up (``setup``), the store exporter (``exporter``).

Kept import-free so that ``tether.store`` can use ``tether.semconv``
without a cycle; the public names are re-exported from ``tether``.
"""
