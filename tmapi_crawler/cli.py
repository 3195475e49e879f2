"""``tmapi``: the installed command (``pip install .`` makes it), Scrapy's own
command line with this project's settings, from any folder.

``tmapi crawl shop -a member_id=... -O products.jsonl`` is ``scrapy crawl``
run inside the repository; so are ``tmapi catalog ...``, ``tmapi cluster
...``, ``tmapi export ...``.  A project of the user's own (its
``SCRAPY_SETTINGS_MODULE``) wins.
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "tmapi_crawler.settings")
    from scrapy.cmdline import execute  # after the settings module is chosen

    execute()
