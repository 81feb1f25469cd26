"""Setuptools shim: Dataflow workers install the pipeline package with --setup_file=./setup.py.

All metadata lives in pyproject.toml; this file only exists because Dataflow's --setup_file
option needs a setup.py to build the source distribution it stages for the workers.
"""

from setuptools import setup

setup()
