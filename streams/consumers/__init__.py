"""Consumers of the domain events: notifications (email), audit log."""
