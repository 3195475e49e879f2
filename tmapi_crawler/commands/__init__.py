"""Project commands: ``crawl`` with one-line errors and meaningful exit codes."""
