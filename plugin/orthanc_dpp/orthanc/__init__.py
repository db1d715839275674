"""The Orthanc glue: the only code of the package that touches ``orthanc``.

Owns: ``adapter`` (install, the REST callbacks, the received-instance hook,
start and stop), what the running Python plugin offers (``platform``), the
ports that reach Orthanc (``ports``), the log handler (``logs``) and the
metrics publisher (``publisher``).
May import: app, config, rest, storage, model, metrics; nothing of the
package imports it.
"""
