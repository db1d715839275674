"""What a Defined Procedure Protocol is to the plugin, and how protocols are found.

Owns: the SOP classes and transfer syntaxes served (``sop``), PS3.4 Table
HH.6-1 as data (``key_table``), DIMSE status codes (``dimse_status``), the
compact ``Record`` of a protocol and the cache its records share, the
in-memory ``ProtocolIndex`` with C-FIND matching (``query``, ``matching``)
and the REST search, the versions of a protocol and the differences
between two, the index snapshot format, the normalization that gives
a protocol the patient, study and series Orthanc needs, and what approvals
say. Plain data and rules: no association, no HTTP, no Orthanc.
May import: nothing else of the package.
"""
