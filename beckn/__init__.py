"""Beckn: offering the cluster's flexibility to grid operators.

Not implemented yet: no Beckn message is sent or accepted by this version. The protocol
material it will follow is in ../shared/specs/beckn (core 1.1.1, DEG drafts, signing notes).
"""
