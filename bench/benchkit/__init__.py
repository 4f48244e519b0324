"""The pieces of ``bench/run.py``: processes and their CPU, wrk, databases, the systems under
test, the phases, and the report. Nothing here is imported by authdb itself."""
