"""Data sources, manifests, pixel loading, caching and patient-disjoint splits."""
