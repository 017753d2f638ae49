"""The paper broker: a real broker in a local SQLite file, with seeded prices and faults."""
