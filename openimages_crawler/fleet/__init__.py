"""``scrapy fleet``: one crawl as N shard jobs on Scrapyd nodes that share the store.

Scrapyd runs jobs but knows nothing of their outcome (a crashed, cancelled or
finished job is just "finished"), and a dead node simply stops answering. The
crawl itself already makes a shard safe to run again: the results files and
parts are its checkpoint, the store lock (a lease in a bucket) keeps two runs
off one shard, and each job keeps a record of its shard in the store
(``monitor.status``) with its exit status once its command has returned. So
the fleet schedules shard K of N as one job per shard, round-robin over the
targets, watches the records (in the shared folder or bucket) and the
targets' job lists, and schedules a shard again on a node that answers when
its job ended without exit 0 or its node is gone. When every shard is done it
merges the results parts, writes one report and exits 0: one command, one
exit status, like ``scrapy crawl``.

``scrapyd`` talks to the nodes, ``state`` keeps ``{store}/.fleet/fleet.json``,
``decisions`` says what to do about each shard, ``watch`` follows the jobs to
the end, ``control`` shows or stops a recorded fleet;
``openimages_crawler.commands.fleet`` is the command.
"""
