"""Settings for openimages-crawler. Every one is listed in README's settings table.

Defaults suit image hosts (many hosts, large bodies, random 5xx), not the
polite one-request-per-second template of ``scrapy startproject``.
"""

from openimages_crawler.dataset import (
    catalogue,  # the official addresses live in the catalogue
)

# Project name Scrapy reports.
BOT_NAME = "openimages_crawler"
# Where the openimages spider lives.
SPIDER_MODULES = ["openimages_crawler.crawl.spider"]
# Adds `scrapy demo` (and later commands) to the scrapy command line.
COMMANDS_MODULE = "openimages_crawler.commands"

# --- Store layout and outputs -------------------------------------------------
# Root folder of the dataset: {IMAGES_STORE}/{Subset}/...
IMAGES_STORE = "openimages"

# --- Object stores (IMAGES_STORE=s3://bucket/prefix or gs://bucket/prefix) ----
# Simultaneous requests to an object store (uploads, listings); a local folder ignores it.
OPENIMAGES_STORE_CONCURRENCY = 32
# Take the bucket's locks on a server that does not enforce conditional writes (a look before
# each write instead: runs on several machines are then not kept apart).
OPENIMAGES_UNSAFE_LEASES = False
# Seconds between uploads of each process's results parts to an object store (0 = at the end only).
OPENIMAGES_RESULTS_FLUSH_SECONDS = 30.0
# Local folder of an object store's results, locks and records ("" = ~/.cache/openimages-crawler/...).
OPENIMAGES_WORK_DIR = ""
# Metadata cache ("" = {IMAGES_STORE}/metadata, or {OPENIMAGES_WORK_DIR}/metadata for an object store).
OPENIMAGES_METADATA_DIR = ""
# No ACL on uploaded objects (the bucket's own policy): buckets with ACLs disabled, AWS's
# default, refuse every ACL but bucket-owner-full-control. Set one to send it.
IMAGES_STORE_S3_ACL = ""
# Scrapy's name for the same; IMAGES_STORE_S3_ACL wins when both are set.
FILES_STORE_S3_ACL = ""
# Keep the byte-exact originals under {Subset}/{OPENIMAGES_ORIGINALS_DIR}/.
OPENIMAGES_SAVE_ORIGINALS = False
# Write a resized copy under {Subset}/{OPENIMAGES_RESIZED_DIR}/.
OPENIMAGES_RESIZE = True
# Folder name of the originals inside a subset.
OPENIMAGES_ORIGINALS_DIR = "images-original"
# Folder name of the resized images inside a subset.
OPENIMAGES_RESIZED_DIR = "images-resized"
# Characters of the ImageID used as a prefix folder (0 = no prefix folder).
OPENIMAGES_SUBDIR_CHARS = 3
# ShrinkToFit (fit in the box, never enlarge), FillCrop (cover, centre crop) or FillDistort.
# Or FitPad (ShrinkToFit, then padded to the size x size square) or ShortSide (the shorter side becomes the size).
OPENIMAGES_RESIZE_MODE = "ShrinkToFit"
# FitPad's padding colour, for every output without its own "pad_color": a colour Pillow's
# ImageColor knows ("black", "#808080", "rgb(124,116,104)"). The other modes do not pad.
OPENIMAGES_PAD_COLOR = "black"
# Box size in pixels for the resize modes.
OPENIMAGES_RESIZE_SIZE = 224
# Resampling filter: lanczos, nearest, bilinear, bicubic, box or hamming.
OPENIMAGES_RESAMPLE = "lanczos"
# Format of the resized images: jpg, png or webp.
OPENIMAGES_RESIZE_FORMAT = "jpg"
# JPEG/WebP quality of the resized images (1-100).
OPENIMAGES_RESIZE_QUALITY = 90
# Several resized outputs from one download: [{"dir", "mode", "size"[, "format", "quality", "resample"]}, ...]
# (JSON on the command line); replaces the single output above when not empty.
OPENIMAGES_OUTPUTS: list[dict[str, object]] = []
# How the single output is stored: files, webdataset, parquet or tfrecord (packs of OPENIMAGES_SHARD_SIZE images).
OPENIMAGES_RESIZE_CONTAINER = "files"
# How originals are stored: files, webdataset, parquet or tfrecord.
OPENIMAGES_ORIGINALS_CONTAINER = "files"
# Images per pack (one file of a packed container: webdataset, parquet, tfrecord).
OPENIMAGES_SHARD_SIZE = 10000

# --- Verification and resume --------------------------------------------------
# On restart, re-check the MD5 of a stored original before counting it as done.
OPENIMAGES_CHECK_MD5_IF_EXISTS = True
# Largest image, in pixels, that is decoded (decompression bomb guard).
OPENIMAGES_MAX_PIXELS = 178_956_970
# Hashes of each original's bytes the results record, a column each (hashlib names,
# comma-separated: sha256, blake2b, ...); empty: none.
OPENIMAGES_HASHES = ""
# Filters on the decoded image (0 = off; exactly at a limit is kept): an image outside them is
# recorded with FailureReason filtered (not an error; never retried by retry_failed=transient).
# The fewest pixels of its shorter side:
OPENIMAGES_MIN_IMAGE_SIDE = 0
# The most pixels (width x height):
OPENIMAGES_MAX_IMAGE_AREA = 0
# The largest ratio of its longer side to its shorter:
OPENIMAGES_MAX_ASPECT_RATIO = 0
# Most memory, in bytes, one image's decode and conversion to upright RGB may hold (a
# worker's bound; OPENIMAGES_WORKERS decode at once), estimated from the header before any
# pixel is decoded, else too_large: width x height x (twice the decoded mode's bytes a pixel,
# 1 for L/P/1, 2 for 16-bit grey, 4 for the rest, + 9 unless RGB). 512 MiB admits a 64 MP RGB
# photo decoded whole (JPEGs are mostly decoded reduced) and refuses the 328 kB 13000x13000
# 16-bit grey PNG that took a worker to 1.7 GB (2.0 GiB by this estimate).
OPENIMAGES_MAX_DECODE_BYTES = 512 * 1024**2
# Metadata rows longer than this (bytes) are invalid rows, read in bounded memory.
OPENIMAGES_MAX_ROW_BYTES = 1024**2
# Below this many free bytes in the store the crawl stops (rows stay pending) before the disk is full;
# the end-of-run database, report and attribution files are skipped when they would cross it.
OPENIMAGES_MIN_FREE_BYTES = 1024**3
# Decode JPEGs at a reduced DCT scale and pre-reduce before the final filter (False: full decode, plain resize).
OPENIMAGES_FAST_RESIZE = True
# Image worker threads (decode, resize, encode, MD5); 0 = one per CPU.
OPENIMAGES_WORKERS = 0
# Bytes Twisted reads from a socket at once (its default, 64 KiB, costs more event-loop trips per image);
# OPENIMAGES_DOWNLOAD_HANDLER=twisted only.
OPENIMAGES_SOCKET_READ_SIZE = 262_144
# Where -a version=N fetches metadata from (the official bucket, or a mirror with the same paths).
OPENIMAGES_METADATA_URL = catalogue.DEFAULT_METADATA_URL
# Check fetched metadata against the catalogue's published size and MD5.
OPENIMAGES_METADATA_VERIFY = True
# Keep downloaded metadata archives (.tar.gz) after unpacking them.
OPENIMAGES_SAVE_TARBALLS = False
# Download Thumbnail300KURL (~640 px, no size/MD5 check, decode check only) where a row has one.
OPENIMAGES_DOWNLOAD_300K = False
# Base of the CVDF mirror used by -a source=cvdf ({base}/{split}/{ImageID}.jpg).
OPENIMAGES_CVDF_URL = catalogue.DEFAULT_CVDF_URL
# Refuse image URLs whose host is or resolves to a loopback, private, link-local, multicast or
# reserved address (blocked_host, no connection made); the offline mirror needs False.
OPENIMAGES_BLOCK_PRIVATE_HOSTS = True
# Seconds a graceful stop (one Ctrl-C) waits for transfers before cutting them off.
OPENIMAGES_STOP_GRACE = 3.0

# --- Connections (the crawler's connection limits are Scrapy's) --------------
# Crawl processes on this machine: auto (one per CPU this process may use) or a number; the
# connection limits and OPENIMAGES_WORKERS are shared out among them.
OPENIMAGES_PROCESSES = "auto"
# Total simultaneous downloads.
CONCURRENT_REQUESTS = 128
# Simultaneous downloads per host.
CONCURRENT_REQUESTS_PER_DOMAIN = 16
# No politeness delay: image CDNs serve many parallel requests.
DOWNLOAD_DELAY = 0
# Seconds before a download is abandoned (then retried).
DOWNLOAD_TIMEOUT = 60
# Larger bodies are cut off early and recorded as too_large.
DOWNLOAD_MAXSIZE = 64 * 1024 * 1024
# Log a warning for bodies over this size.
DOWNLOAD_WARNSIZE = 32 * 1024 * 1024
# A body cut short is a (retried) connection error, never a partial image.
DOWNLOAD_FAIL_ON_DATALOSS = True
# Retries of transient faults (5xx, 408, 429, timeouts, connection errors).
RETRY_TIMES = 3
# Statuses that are retried; others (404, 403, 3xx) are final at once.
RETRY_HTTP_CODES = [500, 502, 503, 504, 522, 524, 408, 429]
# Redirects are never followed: Flickr's 302 means the photo is gone.
REDIRECT_ENABLED = False
# Giving up on a row is routine (it lands in images-failure.csv), not an error.
RETRY_GIVE_UP_LOG_LEVEL = "DEBUG"
# Image hosts have no robots.txt worth a request per host.
ROBOTSTXT_OBEY = False
# Cookies are never needed for static images.
COOKIES_ENABLED = False
# Items processed at once per response: each image response yields one item, and Scrapy starts
# this many tasks per response (its default, 100, cost ~3 ms of event-loop CPU per image).
CONCURRENT_ITEMS = 1
# Response bytes being processed before new downloads wait (back-pressure).
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 64 * 1024 * 1024
# Threads for DNS lookups and file reads.
REACTOR_THREADPOOL_MAXSIZE = 20
# How to reach whoever runs the crawl (a URL or an e-mail address), in the user agent every
# request sends: openimages-crawler/{version} (+{contact}); empty: the name and version only.
# -s USER_AGENT=... replaces the whole agent.
OPENIMAGES_CONTACT = ""
# X-Robots-Tag directives (for all agents, or for "openimages-crawler:") that keep an image
# out of the dataset: failure reason opted_out, final. Empty: the header is not checked.
OPENIMAGES_DISALLOWED_DIRECTIVES = "noai,noimageai,noindex,noimageindex"

# --- Engine components -------------------------------------------------------
# The HTTP(S) download handler: aiohttp (scrapy-download-handlers-incubator's, about a third less
# event-loop CPU per image) or twisted (Scrapy's own HTTP/1.1 handler). Both keep every promise
# above: timeouts, cut bodies, DOWNLOAD_MAXSIZE, no redirects, the limits, the address guard.
OPENIMAGES_DOWNLOAD_HANDLER = "aiohttp"
# Sets DOWNLOAD_HANDLERS from OPENIMAGES_DOWNLOAD_HANDLER (a DOWNLOAD_HANDLERS given with -s wins).
ADDONS = {"openimages_crawler.crawl.handlers.HandlerChoice": 0, "openimages_crawler.crawl.politeness.PoliteAgent": 0}
# Holds CONCURRENT_REQUESTS(_PER_DOMAIN) (Scrapy 2.19 does not with DOWNLOAD_DELAY=0).
DOWNLOADER = "openimages_crawler.crawl.downloader.ConnectionLimitDownloader"
# In-memory queue even with JOBDIR: the store itself is the checkpoint.
SCHEDULER = "openimages_crawler.crawl.scheduler.MemoryScheduler"
# No fingerprint set growing with millions of URLs; rows are unique by construction.
DUPEFILTER_CLASS = "scrapy.dupefilters.BaseDupeFilter"
# Verification, decoding and resizing (an ImagesPipeline subclass).
ITEM_PIPELINES = {"openimages_crawler.crawl.pipeline.OpenImagesPipeline": 300}
# Per-subset results feeds instead of the stock exporter; quick graceful stop; live progress;
# end-of-run report; web view.
EXTENSIONS = {
    "scrapy.extensions.feedexport.FeedExporter": None,
    "openimages_crawler.crawl.feeds.SubsetFeedExporter": 0,
    "openimages_crawler.crawl.stop.QuickStop": 0,
    # Live progress replaces Scrapy's "Crawled N pages" line.
    "scrapy.extensions.logstats.LogStats": None,
    "openimages_crawler.monitor.extensions.CrawlProgress": 0,
    "openimages_crawler.monitor.extensions.RunReport": 0,
    "openimages_crawler.monitor.dashboard.Dashboard": 0,
}
# Redirect and meta-refresh handling is never wanted for image bytes; a refused host is
# final (before the retry middleware, 550, would retry it) and is checked through a proxy
# (after HttpProxyMiddleware, 750, has chosen it).
DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware": None,
    "openimages_crawler.crawl.hosts.BlockedHostMiddleware": 760,
}
# Scrapy's caching resolver, refusing non-public addresses (with OPENIMAGES_BLOCK_PRIVATE_HOSTS).
TWISTED_DNS_RESOLVER = "openimages_crawler.crawl.hosts.PublicAddressResolver"
# Image URLs are not links to crawl: no depth, referer or length filtering.
SPIDER_MIDDLEWARES = {
    "scrapy.spidermiddlewares.depth.DepthMiddleware": None,
    "scrapy.spidermiddlewares.referer.RefererMiddleware": None,
    "scrapy.spidermiddlewares.urllength.UrlLengthMiddleware": None,
}

# --- Results (feed exports, one pair of files per subset) ---------------------
# Local feed files are repaired after a crash and appended to.
FEED_STORAGES = {
    "": "openimages_crawler.crawl.feeds.ResumableFileFeedStorage",
    "file": "openimages_crawler.crawl.feeds.ResumableFileFeedStorage",
}
# CSV rows flushed one at a time, header written once per file.
FEED_EXPORTERS = {"results_csv": "openimages_crawler.crawl.feeds.ResultsCsvItemExporter"}
# images-success.csv (the input's columns) and images-failure.csv (+ reason, details) per subset.
FEEDS = {
    "%(images_store)s/%(subset)s/images-success.csv": {
        "format": "results_csv",
        "item_classes": ["openimages_crawler.checkpoint.results.SuccessRow"],
        "encoding": "utf-8",
    },
    "%(images_store)s/%(subset)s/images-failure.csv": {
        "format": "results_csv",
        "item_classes": ["openimages_crawler.checkpoint.results.FailureRow"],
        "encoding": "utf-8",
    },
}

# INFO: per-row lines (crawled, scraped) are DEBUG and stay quiet.
LOG_LEVEL = "INFO"

# --- Progress ------------------------------------------------------------------
# auto (a live bar on a terminal, else a log line every LOGSTATS_INTERVAL), bar, log or off.
OPENIMAGES_PROGRESS = "auto"
# Seconds between progress lines when not on a terminal (Scrapy's setting).
LOGSTATS_INTERVAL = 60.0
# Write {IMAGES_STORE}/report.html and report.json when the crawl ends.
OPENIMAGES_REPORT = True
# DuckDB database of the store, updated at the end of every crawl ({IMAGES_STORE}: the store's folder, or an object store's work folder; "" = off).
OPENIMAGES_DATABASE = "{IMAGES_STORE}/openimages.duckdb"
# Port of the live web view on 127.0.0.1 (None = off, 0 = any free port, logged at start).
OPENIMAGES_DASHBOARD_PORT = None
# How many of the latest images the web view shows.
OPENIMAGES_DASHBOARD_IMAGES = 24
# Hosts named in each process's status record (.status/): those with most failures (ties: most requests);
# the others are summed into one "(other hosts)" entry, so the record stays small at any host count.
OPENIMAGES_STATUS_HOSTS = 100
# The asyncio reactor (Scrapy's default, stated so the worker pool can rely on it).
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
