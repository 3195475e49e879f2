"""The module of the store's components until round 4: the extension is
:mod:`tmapi_crawler.store.extension`, the middlewares
:mod:`tmapi_crawler.store.middlewares`, the pipeline
:mod:`tmapi_crawler.store.pipeline`.  Their names are found here, with a
deprecation warning, for one release (users' settings name them)."""

from tmapi_crawler._moved import moved_name


def __getattr__(name: str) -> object:
    return moved_name(__name__, name)
