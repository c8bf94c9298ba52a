"""What every route shares: the app state, narrow dependencies, errors, guards, limits, metrics, events."""
