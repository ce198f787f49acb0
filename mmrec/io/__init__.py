"""Files -> rows: tables, ids and timestamps, the catalogue, and the one event reader."""
