"""The dashboard's widgets, one per module; each takes plain snapshot dicts."""
