"""Watching a run: progress figures, the end-of-run report, the web view.

``progress`` and ``report`` have no Scrapy import; the extensions and the
dashboard hook them into the crawl.
"""
