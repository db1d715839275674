"""The plugin as Service Class Provider: its listener and the DIMSE services it answers.

Owns: the ``DppListener`` (pynetdicom's AE and the routing of the DPP and
Protocol Approval Q/R services), the C-ECHO, C-STORE and C-FIND handlers
(``handlers``) with C-FIND's matches and encoded responses, and C-GET and
C-MOVE (``retrieve``, ``get``, ``move``) with their C-STORE sub-operations.
May import: dicom, storage, model, metrics.
"""
