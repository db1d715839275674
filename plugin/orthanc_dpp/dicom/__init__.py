"""The DICOM network side: associations, who may use them, and the services on them.

Owns: in this package itself, who may use which service (``access``), the
modality list (``modalities``), admission and per-connection limits of
associations (``admission``, ``connections``), TLS contexts (``tls``), the
one way the plugin requests an association (``outbound``), and every use of
pynetdicom's private API (``pynetdicom_private``). The services are in the
subpackages ``scp`` (what the plugin answers) and ``scu`` (what it asks of
other archives), which build on these modules.
May import: storage, model.
"""
