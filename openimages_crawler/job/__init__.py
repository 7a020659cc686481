"""A run's job: the ``-a`` arguments parsed (``arguments``) and the dataset
prepared for them (``prepare``: metadata fetched, classes and shards
selected). Above the outputs, whose format names the arguments check; no
Scrapy import."""
