"""The project's commands. Scrapy imports this package before it runs any
command of the project, so every command's log is redacted from its first line."""

from openimages_crawler import redact

redact.install()
