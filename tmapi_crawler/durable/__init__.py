"""What makes a crawl lose nothing: leases acknowledged only once all a
request led to is safe (``leases``), the crash-safe ``JOBDIR`` state and its
scheduler (``jobdir``), requests as JSON (``codec``), one crawl per
``JOBDIR`` or feed file (``locks``), and feeds written whole or the crawl
stops (``feeds``)."""
