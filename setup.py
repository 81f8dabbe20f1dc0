"""Kept for tools that call setup.py (`python setup.py --version`, older pip); pyproject.toml holds all of
the package's metadata, which setuptools reads from there."""
from setuptools import setup

setup()
