"""memdesc: the Linux memory-descriptor plan as an executable model, measured on real machines."""

__version__ = "0.1.0"
