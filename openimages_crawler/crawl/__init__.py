"""The Scrapy glue: spider, item pipeline, downloader, scheduler, feeds."""
