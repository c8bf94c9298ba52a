"""Routes about the service itself: health and the Prometheus scrape."""
