"""Routing: rules (YAML -> frozen models -> compiled predicates), the pure engine, statistics."""
