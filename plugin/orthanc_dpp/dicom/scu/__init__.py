"""The plugin as Service Class User of another node: query, retrieve, push, background jobs.

Owns: the identifiers it sends (``identifiers``), how it reads the answers
(``answers``), the association of one query or retrieve (``association``),
C-FIND (``query``), C-GET and C-MOVE (``retrieve``), C-STORE of protocols to a
modality (``push``, which sends them as C-MOVE's sub-operations do, so it
reuses ``dicom.scp``'s sender) and the background jobs (``jobs``).
May import: dicom, dicom.scp, storage, model.
"""
