"""Event stores: durable storage of events, sync state and dry-run records."""
