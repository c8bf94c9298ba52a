"""The result cache at the API: its routes and answering deterministic jobs at submit time."""
