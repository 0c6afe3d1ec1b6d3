"""Investigations of moed's performance: not installed, run from the repository root (`python -m bench.paired ...`).

Each module is one experiment with its own command line and prints (or writes) JSON; bench/README.md says what
each measures and how to run it, bench/results/ holds the dated notebook and raw JSON of past runs. These modules
import the installed package (`moed.daemon...`); nothing in the package imports them. `moed bench`, the product's
benchmark, lives in moed.daemon.bench.
"""
