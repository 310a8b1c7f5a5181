"""Speculative decoding: drafters behind one interface (base.py), the
registry of speculative methods (registry.py; built-ins in builtin.py) and
rejection sampling (rejection.py)."""
