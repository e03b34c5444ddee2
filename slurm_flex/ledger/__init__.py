"""The verifiable record: a transparency log of every decision (see README in this folder)."""
