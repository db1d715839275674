"""The Orthanc glue: the only code of the package, besides ``adapter``, that touches ``orthanc``.

Owns: what the running Python plugin offers (``platform``), the ports that
reach Orthanc (``ports``), the log handler (``logs``) and the metrics
publisher (``publisher``).
May import: every other module of the package; nothing below imports it.
"""
