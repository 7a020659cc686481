"""openimages-crawler: download, verify and resize Open Images with Scrapy.

The folders follow the data path:

- ``dataset/``: catalogue of versions, metadata fetch, rows, selection,
  annotations, the crawl's arguments and the prepared plan (no Scrapy);
- ``imaging/``: verify, decode, resize and encode one image (no Scrapy);
- ``store/``: the store interface, layout, atomic writes, output sinks, the
  results ledger and the per-row planner (no Scrapy);
- ``crawl/``: the Scrapy glue: spider, pipeline, downloader, feeds;
- ``monitor/``: progress, report and web view;
- ``commands/``: ``scrapy demo`` and ``scrapy resize``;
- ``testing/``: the offline mirror and generated images, for tests and the demo.
"""

__version__ = "1.0"  # setup.py reads it; the user agent names it
