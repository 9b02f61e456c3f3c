"""Jobs that read HubSpot's search API: backfill and reconciliation."""
