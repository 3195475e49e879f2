"""Media: the images and videos of the records downloaded into
``FILES_STORE`` (``downloads``), from the hosts allowed and never inside the
user's network (``hosts``).

``tmapi_crawler.media`` was the module of the media components until round
4: its classes are still found here, with a deprecation warning, for one
release (``tmapi_crawler._moved``)."""

from tmapi_crawler._moved import media_attribute


def __getattr__(name: str) -> object:
    return media_attribute(name)
