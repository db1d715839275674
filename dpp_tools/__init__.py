"""Tools of the project for DPP archives: a sample protocol library and a DPP client.

``python -m dpp_tools`` is the command line (see ``dpp_tools.cli``);
``dpp_tools.samples`` generates the realistic protocols that the tests,
benchmarks and the ``samples`` command use.
"""
