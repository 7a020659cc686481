"""The store: where files go, how they get there atomically, and what is done.

No Scrapy import (checked by a test). ``STORE_SCHEMES`` maps the scheme of
IMAGES_STORE to the store class (the crawl's pipeline uses it as Scrapy's
FilesPipeline uses its own).
"""

from openimages_crawler.store.base import Store, UnsupportedStore, open_store
from openimages_crawler.store.gcs import GcsStore
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.objects import ObjectStore

STORE_SCHEMES: dict[str, type[Store]] = {"": LocalStore, "file": LocalStore, "s3": ObjectStore, "gs": GcsStore}

__all__ = ["STORE_SCHEMES", "LocalStore", "Store", "UnsupportedStore", "open_store"]
