"""The plugin's HTTP side: the ``/dpp`` routes and the protocol library page.

Owns: what every handler speaks (``http``: requests, responses, JSON
errors), the route table (``routes``), the protocol routes (``protocols``),
the routes to other archives (``archives``), zip archives of protocols
(``zips``), the rule against cross-site
requests (``csrf``), the activity log, the attribute tree of a protocol
(``dataset_tree``) and the library page (``page``, ``static/``). Handlers
are plain functions of a ``Request``; Orthanc calls them through the glue.
May import: dicom.scu, dicom, storage, model, metrics.
"""
