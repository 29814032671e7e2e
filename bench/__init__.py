"""`python -m bench` (or `make bench`): throughput and latency of the full stack against an
in-process transformers baseline measured in the same run.  See `python -m bench --help`."""
