"""The plugin as Service Class User of another DPP archive: query, retrieve, background jobs.

Owns: the identifiers it sends (``identifiers``), how it reads the answers
(``answers``), the association of one query or retrieve (``association``),
C-FIND (``query``), C-GET and C-MOVE (``retrieve``) and the background
retrieves (``jobs``).
May import: dicom, storage, model.
"""
