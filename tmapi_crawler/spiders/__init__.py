"""The spiders: ``shop``, ``category`` and ``item``."""
