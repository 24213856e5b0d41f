"""Webhook delivery: the consumer of the agency inboxes (the sink is sinks/webhook.py)."""
