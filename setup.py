"""For scrapyd-deploy, which builds an egg with ``python setup.py bdist_egg``
(and writes a setup.py of its own when there is none): the metadata, the
packages, the sandbox's data files and the ``scrapy`` entry point are in
pyproject.toml."""

from setuptools import setup

setup()
