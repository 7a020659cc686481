"""Dataset preparation: what Open Images holds and which rows a crawl takes.

No Scrapy import (checked by a test): the catalogue of versions, fetching and
unpacking metadata, reading and validating rows, selection, annotations.
"""
