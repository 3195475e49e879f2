"""Telling people how a crawl went: spidermon's monitors (``monitors``),
the changes worth an alert (``digest``), the alert to a webhook and to
Apprise's services (``alerts``, ``services``)."""
