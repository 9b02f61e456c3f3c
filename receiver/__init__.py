"""stagesync: a durable HubSpot contact webhook receiver that syncs contacts to a CRM."""

__version__ = "0.1.0"
