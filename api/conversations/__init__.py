"""Conversation history routes."""
