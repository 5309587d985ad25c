"""Synthetic "shapes world": scenes and motions (world), dataset writer (data), pixel checks (measure)."""
