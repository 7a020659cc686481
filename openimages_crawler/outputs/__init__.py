"""What a crawl writes beside its results, and what is made from a store
afterwards: output sinks (files or packs), annotation and attribution files,
the DuckDB database, labels for detection trainers. ``formats`` names every
output format once. No Scrapy import.
"""
