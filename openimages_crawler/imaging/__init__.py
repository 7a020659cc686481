"""The CPU stage: verify, decode, turn upright, resize and encode one image.

Pure functions over bytes and Pillow images, with no Scrapy import (checked
by a test), shared by the crawl, ``scrapy resize`` and the benchmark.
"""
