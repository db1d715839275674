"""Defined Procedure Protocol Query/Retrieve SCP for Orthanc.

Every module in this package is plain Python; only ``orthanc_dpp.orthanc.adapter``
talks to the ``orthanc`` module that Orthanc's Python plugin provides.
"""

__version__ = "0.1.0"
