"""The version of nonrobust: its one home (the package, the build and every record of provenance read it here)."""

__version__ = "0.2.0"
