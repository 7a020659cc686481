"""The checkpoint: what a run has done, so an interrupted run restarts
without a download it already made. The results parts each process appends
to, their merge into the results files (``parts``, ``ledger``), the ledger of
rows already done, the planner that tells a new row from a done one, the rows
held until their containers are published (``pending``), and the results
settled around a run whatever the store (``settle``). No Scrapy import.
"""
