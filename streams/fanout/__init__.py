"""The fan-out: each valid event to the inboxes of the agencies that subscribed."""
