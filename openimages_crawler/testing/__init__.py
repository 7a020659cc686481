"""An offline Open Images mirror with the faults real hosts show, and
generated images: for the tests, the benchmark and ``scrapy demo``."""
