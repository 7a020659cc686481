"""The run logic below the commands (``commands/`` only parses options and
calls in here): a run of several processes (``supervisor``), the database's
update (``database``) and the labels' export (``export``) from the crawl's
settings."""
