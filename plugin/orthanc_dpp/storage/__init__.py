"""Protocols as stored files in Orthanc's database, and the feed that keeps the index current.

Owns: bounded decoding of DIMSE datasets and Part 10 files (``decoding``),
encoded datasets walked without decoding (``encoded``), the
``ProtocolLibrary`` (store and read back through the ``OrthancApi``
interface; ``StoreError`` in ``errors``), the records of stored files
(``stored_record``), the content approvals are bound to
(``approved_content``), and the ``IndexFeed`` thread that follows Orthanc's
change feed. Orthanc is reached only through interfaces the composition root
fills in.
May import: model.
"""
